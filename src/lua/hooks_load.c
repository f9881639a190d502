/* hooks_load.c: loading the hooks into the loop's Lua state.
 *
 * Owns: creating the hooks_t and its state (libraries, the route module), running the
 * embedded default hooks and the operator's scripts/route.lua over them, checking the table
 * it returns, which of its hooks are route.defaults' C functions, the hook sets (the current
 * one and those a reload replaced while requests still pin them), hot reload (dropping the
 * modules that came from the scripts folder so edited helpers load again, and putting the
 * running hooks' copies back when the load fails), the `require`
 * searcher that finds the folder's modules in the loaded snapshot, and hooks_free.
 * Must not: read files once the loop runs (route.lua and its helpers come from a
 * script_snapshot_t that reload.c read on a work thread; only hooks_new and the synchronous
 * hooks_reload, for start-up and tests, read the folder themselves), call hooks, or replace
 * the running hook table before a new one loaded whole. */
#include "hooks_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lualib.h>

#include "route/config.h"
#include "route/script_snapshot.h"
#include "route/util.h"

static const char *const hook_names[] = {"authorize", "pick_upstream", "on_response"};

/* During a reload: the folder's modules as the running hooks required them. */
#define REG_FOLDER_MODULES_SAVED "route.folder_modules_saved"

static const unsigned hook_bits[] = {HOOK_AUTHORIZE, HOOK_PICK_UPSTREAM, HOOK_ON_RESPONSE};

typedef struct load_job {
    hooks_t *h;
    const script_snapshot_t *snap; /* the folder's files, read off the loop */
    int first;                     /* a fresh state: open libraries and the route module first */
    int loaded_file;               /* out: the folder had a route.lua */
    hookset_t *set;                /* out: the loaded table's set (allocated by the caller) */
} load_job_t;

/* The value on top must be a table of hooks; where is the chunk name for the message. */
static void check_hook_table(lua_State *L, const char *where) {
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: must return a table of hooks, not %s", where, luaL_typename(L, -1));
    for (size_t i = 0; i < sizeof hook_names / sizeof hook_names[0]; i++) {
        lua_getfield(L, -1, hook_names[i]);
        int t = lua_type(L, -1);
        lua_pop(L, 1);
        if (t != LUA_TNIL && t != LUA_TFUNCTION)
            luaL_error(L, "%s: hook '%s' must be a function, not %s", where, hook_names[i],
                       lua_typename(L, t));
    }
}

/* A load error names the operator's file in full: "route.lua:3: ..." becomes
 * "<scripts_dir>/route.lua:3: ...". Takes msg. */
static char *with_path(hooks_t *h, char *msg) {
    static const char prefix[] = SCRIPT_NAME ":";
    if (!msg || !h->scripts_dir || strncmp(msg, prefix, sizeof prefix - 1) != 0) return msg;
    size_t n = strlen(h->scripts_dir) + 1 + strlen(msg) + 1;
    char *out = malloc(n);
    if (!out) return msg;
    snprintf(out, n, "%s/%s", h->scripts_dir, msg);
    free(msg);
    return out;
}

/* require "a.b" finds a/b.lua of the scripts folder in the snapshot the running hooks were
 * loaded from (during a load, the one being loaded), so neither a load nor a hook that
 * requires lazily reads a file on the loop. Lua's own searchers still follow for modules
 * outside the folder. */
static int folder_searcher(lua_State *L) {
    hooks_t *h = lua_touserdata(L, lua_upvalueindex(1));
    const char *module = luaL_checkstring(L, 1);
    const script_snapshot_t *snap = h->loading_snap ? h->loading_snap : h->snap;
    char name[1024];
    size_t n = strlen(module);
    if (!snap || n + 5 > sizeof name) {
        lua_pushfstring(L, "no module '%s' in the scripts folder", module);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        name[i] = module[i] == '.' ? '/' : module[i];
    memcpy(name + n, ".lua", 5);
    const script_file_t *f = script_snapshot_find(snap, name);
    if (!f) {
        lua_pushfstring(L, "no file '%s' in the scripts folder", name);
        return 1;
    }
    lua_pushfstring(L, "@%s", name);
    if (luaL_loadbufferx(L, f->text, f->len, lua_tostring(L, -1), "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from the scripts folder:\n\t%s", module,
                          lua_tostring(L, -1));
    /* Remembered so that a reload drops it (and loads the edited copy). */
    lua_getfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, module);
    lua_pop(L, 1);
    lua_pushstring(L, name);
    return 2;
}

/* Our searcher goes right after package.preload's, ahead of the path searchers. */
static void install_folder_searcher(lua_State *L, hooks_t *h) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers");
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 2; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, folder_searcher, 1);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
}

static int load_p(lua_State *L) {
    load_job_t *job = lua_touserdata(L, 1);
    hooks_t *h = job->h;

    if (job->first) {
        luaL_openlibs(L);
        lua_api_open(L, &h->host);
        lua_req_open(L);
        install_folder_searcher(L, h);
    } else {
        /* A reload must pick up edited helper modules too, not the copies require cached;
         * modules from elsewhere (system libraries) stay loaded, which also keeps their
         * files from being read again on the loop. The copies taken out are kept aside until
         * the load is known to have worked (restore_folder_modules). */
        lua_getfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_newtable(L); /* module name -> the value package.loaded held */
        lua_pushnil(L);
        while (lua_next(L, -4)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushvalue(L, -1);
            lua_rawget(L, -5);
            lua_rawset(L, -4); /* saved[name] = loaded[name] */
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, -5); /* loaded[name] = nil */
        }
        lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES_SAVED);
        lua_pop(L, 2);
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
    }

    /* The embedded defaults, run fresh each time so a script that mutated route.defaults
     * gets a clean copy on reload: route.defaults holds the C functions while it runs (it
     * returns them), then becomes the table it returned. */
    lua_api_push_c_defaults(L);
    lua_api_set_defaults(L, -1);
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, route_lua_embedded, route_lua_embedded_len, EMBEDDED_CHUNK, "t"))
        lua_error(L);
    lua_call(L, 0, 1);
    check_hook_table(L, "route.lua (embedded)");
    int defaults = lua_gettop(L);
    /* Before the operator's script runs, so its top level can keep route.defaults in a local
     * at start-up as on a reload. */
    lua_api_set_defaults(L, defaults);

    /* The merged table: every default hook, then whatever the operator's script returns. */
    lua_newtable(L);
    int merged = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, defaults)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, merged);
    }

    const script_file_t *route_lua = script_snapshot_find(job->snap, SCRIPT_NAME);
    if (route_lua) {
        const char *text = route_lua->text;
        size_t len = route_lua->len;
        /* Skip a "#!" line as lua(1) does, keeping its newline so line numbers hold. */
        size_t skip = 0;
        if (len && text[0] == '#')
            while (skip < len && text[skip] != '\n')
                skip++;
        /* "route.lua", not the path: errors at request time go to API clients, which have no
         * business knowing the server's directories. Load errors get the path back in
         * with_path(). */
        if (luaL_loadbufferx(L, text + skip, len - skip, "@" SCRIPT_NAME, "t") != LUA_OK)
            lua_error(L);
        job->loaded_file = 1;
        lua_call(L, 0, 1);
        check_hook_table(L, SCRIPT_NAME);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, merged);
        }
        lua_pop(L, 1);
    }

    /* Which hooks are the C defaults: an identity check of the function values, once per
     * table, so hooks.c can call those natively (see there). */
    lua_api_push_c_defaults(L);
    int c_defaults = lua_gettop(L);
    unsigned bits = 0;
    for (size_t i = 0; i < sizeof hook_names / sizeof hook_names[0]; i++) {
        lua_getfield(L, merged, hook_names[i]);
        lua_getfield(L, c_defaults, hook_names[i]);
        if (lua_rawequal(L, -1, -2)) bits |= hook_bits[i];
        lua_pop(L, 2);
    }
    /* Only now that everything loaded does the new table replace the running one (the
     * caller swaps the sets once this returned). */
    lua_pushvalue(L, merged);
    job->set->table_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    job->set->c_default = bits;
    return 0;
}

/* After a reload that failed: package.loaded holds the running hooks' folder modules again,
 * not those the failed load required from the new files (a hook that requires lazily would
 * otherwise run code of the load that was refused). */
static int restore_folder_modules(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, -5);
        }
    }
    lua_pop(L, 1);
    lua_newtable(L); /* the new REG_FOLDER_MODULES: the restored names */
    lua_getfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES_SAVED);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -6); /* loaded[name] = value */
            lua_pushvalue(L, -1);
            lua_pushboolean(L, 1);
            lua_rawset(L, -5); /* modules[name] = true */
        }
    }
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES_SAVED);
    lua_pop(L, 1);
    return 0;
}

static int drop_saved_modules(lua_State *L) {
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_FOLDER_MODULES_SAVED);
    return 0;
}

/* The current set is replaced: it goes when its last request lets go of it. */
static void retire(hooks_t *h, hookset_t *old) {
    if (!old) return;
    old->next = h->retired;
    h->retired = old;
    hookset_unpin(h, old);
}

static int run_load(hooks_t *h, load_job_t *job, char **msg) {
    job->set = calloc(1, sizeof *job->set);
    if (!job->set) {
        *msg = strdup("hooks: out of memory");
        return -1;
    }
    job->set->table_ref = LUA_NOREF;
    h->loading = 1;
    h->loading_snap = job->snap;
    int rc = vm_run_protected(h, load_p, job, msg);
    h->loading_snap = NULL;
    h->loading = 0;
    if (!job->first) {
        char *ignored = NULL;
        vm_run_protected(h, rc != 0 ? restore_folder_modules : drop_saved_modules, NULL, &ignored);
        free(ignored);
    }
    if (rc != 0) {
        free(job->set);
        return rc;
    }
    job->set->refs = 1;
    hookset_t *old = h->current;
    h->current = job->set;
    retire(h, old);
    return 0;
}

/* Runs a load; a failure's message names the operator's file in full and goes to *err (or is
 * dropped when err is NULL). 0 or -1. */
static int load_reporting(hooks_t *h, load_job_t *job, char **err) {
    char *msg = NULL;
    if (run_load(h, job, &msg) == 0) return 0;
    msg = with_path(h, msg);
    if (err)
        *err = msg;
    else
        free(msg);
    return -1;
}

hooks_t *hooks_new(route_ctx_t *ctx, const char *scripts_dir, char **err) {
    if (err) *err = NULL;
    hooks_t *h = calloc(1, sizeof *h);
    if (!h) goto oom;
    h->ctx = ctx;
    h->host.ctx = ctx;
    h->mem_limit = (size_t)config_defaults()->hook_memory_limit_mb << 20;
    h->budget = config_defaults()->hook_instruction_budget;
    if (scripts_dir && *scripts_dir) {
        size_t n = strlen(scripts_dir);
        while (n > 1 && scripts_dir[n - 1] == '/')
            n--;
        h->scripts_dir = strndup(scripts_dir, n);
        if (!h->scripts_dir) goto oom;
    }
    h->L = vm_new_state(h);
    if (!h->L) goto oom;

    script_snapshot_t *snap = script_snapshot_read(h->scripts_dir, err);
    if (!snap) {
        hooks_free(h);
        return NULL;
    }
    load_job_t job = {h, snap, 1, 0, NULL};
    if (load_reporting(h, &job, err) != 0) {
        script_snapshot_free(snap);
        hooks_free(h);
        return NULL;
    }
    h->snap = snap;
    if (job.loaded_file)
        route_log(LOG_INFO, "hooks: loaded %s/route.lua over the embedded defaults",
                  h->scripts_dir);
    else
        route_log(LOG_INFO, "hooks: no route.lua in %s, using the embedded defaults",
                  h->scripts_dir ? h->scripts_dir : "(none)");
    return h;

oom:
    if (err) *err = strdup("hooks: out of memory");
    hooks_free(h);
    return NULL;
}

int hooks_reload_snapshot(hooks_t *h, script_snapshot_t *snap, char **err) {
    if (err) *err = NULL;
    load_job_t job = {h, snap, 0, 0, NULL};
    if (load_reporting(h, &job, err) != 0) {
        script_snapshot_free(snap);
        return -1;
    }
    script_snapshot_free(h->snap);
    h->snap = snap;
    return 0;
}

int hooks_pick_is_default(const hooks_t *h) {
    return h && h->current && (h->current->c_default & HOOK_PICK_UPSTREAM);
}

const struct script_snapshot *hooks_loaded_snapshot(const hooks_t *h) {
    return h ? h->snap : NULL;
}

int hooks_reload(hooks_t *h, char **err) {
    script_snapshot_t *snap = script_snapshot_read(h->scripts_dir, err);
    if (!snap) return -1;
    return hooks_reload_snapshot(h, snap, err);
}

void hooks_free(hooks_t *h) {
    if (!h) return;
    /* Requests never released (a test's) leave their sets here; the state frees the tables. */
    free(h->current);
    for (hookset_t *s = h->retired, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    if (h->L) lua_close(h->L);
    lua_api_close(&h->host);
    script_snapshot_free(h->snap);
    free(h->scripts_dir);
    free(h);
}
