/* hooks_load.c: loading the hooks into the loop's Lua state.
 *
 * Owns: creating the hooks_t and its state (libraries, the route module), running the
 * embedded default hooks and the operator's scripts/route.lua over them, checking the table
 * it returns, which of its hooks are route.defaults' C functions, the hook sets (the current
 * one and those a reload replaced while requests still pin them), hot reload (dropping the
 * script's own modules so edited helpers load again), and hooks_free.
 * Must not: run on a request's path (reading the script file is blocking I/O: start-up and
 * reload only), call hooks, or replace the running hook table before a new one loaded whole. */
#include "hooks_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lualib.h>

#include "route/config.h"
#include "route/util.h"

static const char *const hook_names[] = {"authorize", "pick_upstream", "on_response"};

static const unsigned hook_bits[] = {HOOK_AUTHORIZE, HOOK_PICK_UPSTREAM, HOOK_ON_RESPONSE};

typedef struct load_job {
    hooks_t *h;
    int first;       /* a fresh state: open libraries and the route module first */
    int loaded_file; /* out: the folder had a route.lua */
    hookset_t *set;  /* out: the loaded table's set (allocated by the caller) */
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

/* The whole file, malloc'd; NULL with errno set. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
        errno = EIO;
    }
    fclose(f);
    *len = n;
    return buf;
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

static int load_p(lua_State *L) {
    load_job_t *job = lua_touserdata(L, 1);
    hooks_t *h = job->h;

    if (job->first) {
        luaL_openlibs(L);
        lua_api_open(L, &h->host);
        lua_req_open(L);
        if (h->scripts_dir) {
            /* Scripts can require their own helpers from the scripts folder. */
            lua_getglobal(L, "package");
            lua_getfield(L, -1, "path");
            lua_pushfstring(L, "%s/?.lua;%s", h->scripts_dir, lua_tostring(L, -1));
            lua_setfield(L, -3, "path");
            lua_pop(L, 2);
        }
        /* The modules a fresh state has; anything else in package.loaded came from scripts. */
        lua_newtable(L);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushboolean(L, 1);
            lua_rawset(L, -5);
        }
        lua_pop(L, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, REG_BASELINE);
    } else {
        /* A reload must pick up edited helper modules too, not the copies require cached. */
        lua_getfield(L, LUA_REGISTRYINDEX, REG_BASELINE);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_newtable(L); /* names to drop: package.loaded must not change while traversed */
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -5) == LUA_TNIL) {
                lua_pushvalue(L, -2);
                lua_rawseti(L, -4, (lua_Integer)lua_rawlen(L, -4) + 1);
            }
            lua_pop(L, 1);
        }
        for (lua_Integer i = 1, n = (lua_Integer)lua_rawlen(L, -1); i <= n; i++) {
            lua_rawgeti(L, -1, i);
            lua_pushnil(L);
            lua_rawset(L, -4);
        }
        lua_pop(L, 3);
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

    if (h->scripts_dir) {
        lua_pushfstring(L, "%s/route.lua", h->scripts_dir);
        const char *path = lua_tostring(L, -1);
        struct stat st;
        if (stat(path, &st) == 0) {
            size_t len = 0;
            char *text = read_file(path, &len);
            if (!text) luaL_error(L, "cannot read %s: %s", path, strerror(errno));
            /* Skip a "#!" line as lua(1) does, keeping its newline so line numbers hold. */
            size_t skip = 0;
            if (len && text[0] == '#')
                while (skip < len && text[skip] != '\n')
                    skip++;
            /* "route.lua", not the path: errors at request time go to API clients, which have
             * no business knowing the server's directories. Load errors get the path back in
             * with_path(). */
            int rc = luaL_loadbufferx(L, text + skip, len - skip, "@" SCRIPT_NAME, "t");
            free(text);
            if (rc != LUA_OK) lua_error(L);
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
        } else if (errno != ENOENT) {
            luaL_error(L, "cannot open %s: %s", path, strerror(errno));
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
    int rc = vm_run_protected(h, load_p, job, msg);
    h->loading = 0;
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

    load_job_t job = {h, 1, 0, NULL};
    if (load_reporting(h, &job, err) != 0) {
        hooks_free(h);
        return NULL;
    }
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

int hooks_reload(hooks_t *h, char **err) {
    if (err) *err = NULL;
    load_job_t job = {h, 0, 0, NULL};
    return load_reporting(h, &job, err);
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
    free(h->scripts_dir);
    free(h);
}
