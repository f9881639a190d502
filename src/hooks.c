/* hooks.c: owns the Lua state of one event loop: loading the embedded default hooks and the
 * operator's scripts/route.lua over them, reloading, calling authorize / pick_upstream /
 * on_response with the request and response as Lua tables, and the instruction and memory
 * budgets that stop a runaway hook. It must not do network or file I/O on the request path,
 * keep a request pointer reachable from Lua after a hook returns, or log a key or a token.
 *
 * Every Lua API call that can allocate runs inside lua_pcall: outside one, an allocation
 * failure (the memory cap) would panic and abort the process. */
#include "route/hooks.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "route/config.h"
#include "route/lua_api.h"
#include "route/store.h"
#include "route/util.h"

#define DEFAULT_INSTRUCTION_BUDGET 10000000LL
#define DEFAULT_MEMORY_LIMIT_MB    256LL
/* How often (in VM instructions) the budget is checked: rare enough to cost nothing,
 * often enough that overshooting the budget does not matter. */
#define BUDGET_CHECK_EVERY 1000

#define REG_HOOKS      "route.hooks"
#define REG_BASELINE   "route.baseline_modules"
#define EMBEDDED_CHUNK "=route.lua (embedded)"
#define SCRIPT_NAME    "route.lua"

static const char *const hook_names[] = {"authorize", "pick_upstream", "on_response"};

struct hooks {
    route_ctx_t *ctx;
    lua_State *L;
    char *scripts_dir; /* NULL: embedded hooks only */
    lua_api_host_t host;

    /* Budgets, re-read from config before each call so a -set takes effect next request. */
    long long budget; /* instructions per top-level call */
    long long used;   /* instructions counted in the current call */
    size_t mem_limit; /* bytes for the whole state */
    size_t mem_used;
};

/* ---- allocator and budgets ---- */

/* Growth beyond the cap fails, and Lua turns that into a "not enough memory" error after
 * an emergency collection; shrinking and freeing always succeed, as Lua requires. */
static void *hooks_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    hooks_t *h = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        h->mem_used -= old;
        return NULL;
    }
    if (nsize > old && h->mem_limit && h->mem_used - old + nsize > h->mem_limit) {
        /* A refusal is dear: a script that catches "not enough memory" with pcall and tries
         * again would otherwise fill and collect the whole cap thousands of times before
         * its instruction budget ran out. */
        h->used += h->budget / 8;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) return NULL;
    h->mem_used = h->mem_used - old + nsize;
    return p;
}

static hooks_t *hooks_of(lua_State *L) {
    return *(hooks_t **)lua_getextraspace(L);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    hooks_t *h = hooks_of(L);
    h->used += BUDGET_CHECK_EVERY;
    if (h->used <= h->budget) return;
    /* From now on every instruction of this thread raises: a script that catches the error
     * with pcall and loops again cannot run on, since its next instruction raises anew.
     * apply_limits() restores the normal interval before the next call. */
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    /* luaL_error would name the caller; the loop that ran away is the function at level 0. */
    lua_Debug d;
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
        lua_pushfstring(L, "%s:%d: ", d.short_src, d.currentline);
    else
        lua_pushliteral(L, "");
    lua_pushfstring(L, "hook exceeded its instruction budget (%I instructions)",
                    (lua_Integer)h->budget);
    lua_concat(L, 2);
    lua_error(L);
}

static void apply_limits(hooks_t *h) {
    const route_config_t *cfg = config_current(h->ctx);
    h->budget = cfg->hook_instruction_budget;
    long long mb = cfg->hook_memory_limit_mb;
    if (mb > (long long)(SIZE_MAX >> 21)) mb = (long long)(SIZE_MAX >> 21);
    h->mem_limit = (size_t)mb << 20;
    h->used = 0;
    lua_sethook(h->L, count_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);
}

/* ---- protected calls ---- */

/* No traceback: the answer to a client and the log line keep "file:line: message". */
static int msgh(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

/* Runs fn(ud) protected with the budgets in force. Returns 0, or -1 with a malloc'd,
 * redacted message in *err. */
static int run_protected(hooks_t *h, lua_CFunction fn, void *ud, char **err) {
    lua_State *L = h->L;
    int base = lua_gettop(L);
    apply_limits(h);
    lua_pushcfunction(L, msgh);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    int rc = lua_pcall(L, 1, 0, base + 1);
    if (rc == LUA_OK) {
        lua_settop(L, base);
        return 0;
    }
    char *msg = NULL;
    if (rc == LUA_ERRMEM) {
        char tmp[96];
        snprintf(tmp, sizeof tmp, "not enough memory (hook memory limit %zu MiB)",
                 h->mem_limit >> 20);
        msg = strdup(tmp);
    } else {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        if (!s) {
            s = "unknown Lua error";
            len = strlen(s);
        }
        msg = lua_api_redact(&h->host, s, len);
    }
    lua_settop(L, base);
    if (rc == LUA_ERRMEM)
        lua_gc(L, LUA_GCCOLLECT); /* give the garbage of the failed call back now */
    if (err)
        *err = msg ? msg : strdup("out of memory");
    else
        free(msg);
    return -1;
}

/* ---- loading ---- */

typedef struct load_job {
    hooks_t *h;
    int first;       /* a fresh state: open libraries and the route module first */
    int loaded_file; /* out: the folder had a route.lua */
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
     * gets a clean copy on reload. */
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

    /* Only now that everything loaded does the new table replace the running one. */
    lua_pushvalue(L, merged);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_HOOKS);
    return 0;
}

hooks_t *hooks_new(route_ctx_t *ctx, const char *scripts_dir, char **err) {
    if (err) *err = NULL;
    hooks_t *h = calloc(1, sizeof *h);
    if (!h) goto oom;
    h->ctx = ctx;
    h->host.ctx = ctx;
    h->mem_limit = (size_t)DEFAULT_MEMORY_LIMIT_MB << 20;
    h->budget = DEFAULT_INSTRUCTION_BUDGET;
    if (scripts_dir && *scripts_dir) {
        size_t n = strlen(scripts_dir);
        while (n > 1 && scripts_dir[n - 1] == '/')
            n--;
        h->scripts_dir = strndup(scripts_dir, n);
        if (!h->scripts_dir) goto oom;
    }
    h->L = lua_newstate(hooks_alloc, h);
    if (!h->L) goto oom;
    *(hooks_t **)lua_getextraspace(h->L) = h;
    /* Set on the main thread; coroutines a script creates inherit it. */
    lua_sethook(h->L, count_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);

    load_job_t job = {h, 1, 0};
    char *msg = NULL;
    if (run_protected(h, load_p, &job, &msg) != 0) {
        msg = with_path(h, msg);
        if (err)
            *err = msg;
        else
            free(msg);
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
    load_job_t job = {h, 0, 0};
    char *msg = NULL;
    if (run_protected(h, load_p, &job, &msg) != 0) {
        msg = with_path(h, msg);
        if (err)
            *err = msg;
        else
            free(msg);
        return -1;
    }
    return 0;
}

void hooks_release(hooks_t *h, route_req_t *req) {
    if (req->hooks_ref > 0) luaL_unref(h->L, LUA_REGISTRYINDEX, req->hooks_ref);
    req->hooks_ref = 0;
}

void hooks_free(hooks_t *h) {
    if (!h) return;
    if (h->L) lua_close(h->L);
    free(h->scripts_dir);
    free(h);
}

/* ---- the req table ---- */

/* The link from a req table to the live request. Cleared as soon as the hook returns, so a
 * req a script kept (say in route.shared) reads body as nil later instead of freed memory. */
typedef struct req_box {
    route_req_t *req;
} req_box_t;

static int req_index(lua_State *L) {
    req_box_t *box = lua_touserdata(L, lua_upvalueindex(1));
    const char *key = lua_tostring(L, 2);
    if (!box->req || !key || strcmp(key, "body") != 0) return 0;
    size_t body_len = 0;
    const char *body = http_request_body(box->req->http, &body_len);
    lua_pushlstring(L, body, body_len);
    /* Cache it in the table: read twice, copied once. */
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

typedef struct call {
    hooks_t *h;
    route_req_t *req;
    req_box_t *box; /* set once the box is anchored in the registry */

    /* authorize */
    int allowed, status;
    const char *message;
    /* pick_upstream */
    route_candidate_t *cands;
    size_t n_cands;
    /* on_response */
    const route_res_t *res;
} call_t;

static void set_str(lua_State *L, const char *name, const char *v) {
    if (v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, name);
    }
}

/* Builds the req table. Headers are copied eagerly (small); the body, up to 32 MiB, only if a
 * hook reads it. */
static void push_req(lua_State *L, call_t *c) {
    route_req_t *req = c->req;
    http_request_t *hr = req->http;

    req_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->req = NULL;
    /* Anchored by the call's address so it cannot be collected before run_call clears it. */
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, c);
    box->req = req;
    c->box = box;
    int box_idx = lua_gettop(L);

    lua_createtable(L, 0, 10);
    set_str(L, "id", req->id);
    set_str(L, "method", http_request_method(hr));
    set_str(L, "path", http_request_path(hr));
    set_str(L, "query", http_request_query(hr));
    set_str(L, "client_ip", http_request_client_ip(hr));
    set_str(L, "model", req->model);
    lua_pushboolean(L, req->stream);
    lua_setfield(L, -2, "stream");

    size_t n_headers = http_request_header_count(hr);
    lua_createtable(L, 0, (int)n_headers);
    for (size_t i = 0; i < n_headers; i++) {
        const route_header_t *hd = http_request_header_at(hr, i);
        if (!hd->name) continue;
        lua_pushlstring(L, hd->name, hd->name_len);
        /* The first of repeated headers, as http_request_header answers. */
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        lua_pop(L, 1);
        lua_pushlstring(L, hd->name, hd->name_len);
        lua_pushlstring(L, hd->value ? hd->value : "", hd->value_len);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");

    lua_createtable(L, 0, 1);
    lua_pushvalue(L, box_idx);
    lua_pushcclosure(L, req_index, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_remove(L, box_idx);
}

/* A request keeps the hook table it started with, so a reload in the middle of it (between
 * authorize and on_response) does not hand it half to the old script, half to the new. */
static void push_hook(lua_State *L, route_req_t *req, const char *name) {
    if (req->hooks_ref > 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, req->hooks_ref);
    } else {
        lua_getfield(L, LUA_REGISTRYINDEX, REG_HOOKS);
        lua_pushvalue(L, -1);
        req->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if (!lua_istable(L, -1)) luaL_error(L, "hooks are not loaded");
    lua_getfield(L, -1, name);
    if (!lua_isfunction(L, -1)) luaL_error(L, "no '%s' hook", name);
    lua_remove(L, -2);
}

/* run_protected for a hook that sees a request: afterwards the req table, wherever a script
 * kept it, no longer reaches the request. */
static int run_call(call_t *c, lua_CFunction fn, char **err) {
    hooks_t *h = c->h;
    h->host.req = c->req;
    int rc = run_protected(h, fn, c, err);
    if (c->box) {
        c->box->req = NULL;
        c->box = NULL;
        lua_pushnil(h->L);
        lua_rawsetp(h->L, LUA_REGISTRYINDEX, c);
    }
    h->host.req = NULL;
    return rc;
}

/* ---- authorize ---- */

static int authorize_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    push_hook(L, c->req, "authorize");
    push_req(L, c);
    lua_call(L, 1, 3);
    if (lua_type(L, -3) == LUA_TBOOLEAN && lua_toboolean(L, -3)) {
        c->allowed = 1;
        return 0;
    }
    if (!lua_isnoneornil(L, -3) && lua_type(L, -3) != LUA_TBOOLEAN)
        return luaL_error(L, "authorize returned a %s, expected true or false, status, message",
                          luaL_typename(L, -3));
    c->allowed = 0;
    int isnum = 0;
    lua_Integer st = lua_tointegerx(L, -2, &isnum);
    c->status = isnum && st >= 100 && st <= 599 ? (int)st : 403;
    const char *m = lua_tostring(L, -1);
    c->message = arena_strdup(http_request_arena(c->req->http), m ? m : "unauthorized");
    return 0;
}

int hooks_authorize(hooks_t *h, route_req_t *req, int *status, const char **message) {
    call_t c = {.h = h, .req = req};
    char *err = NULL;
    if (run_call(&c, authorize_p, &err) != 0) {
        route_log(LOG_ERROR, "hooks: authorize failed: %s", err);
        *status = 500;
        *message = arena_strdup(http_request_arena(req->http), err);
        free(err);
        return -1;
    }
    if (c.allowed) return 1;
    *status = c.status;
    *message = c.message;
    return 0;
}

/* ---- pick_upstream ---- */

static double opt_timeout(lua_State *L, int t, const char *name) {
    lua_getfield(L, t, name);
    int isnum = 0;
    double v = (double)lua_tonumberx(L, -1, &isnum);
    lua_pop(L, 1);
    return isnum && v >= 0 ? v : -1;
}

/* Copies the upstream table at idx into cand (strings into the request's arena). */
static void copy_candidate(lua_State *L, call_t *c, int idx, route_candidate_t *cand) {
    arena_t *a = http_request_arena(c->req->http);
    if (!lua_istable(L, idx)) luaL_error(L, "pick_upstream returned an invalid upstream");
    lua_getfield(L, idx, "endpoint");
    lua_getfield(L, idx, "sk");
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "pick_upstream returned an invalid upstream");
    size_t elen, klen;
    const char *e = lua_tolstring(L, -2, &elen);
    const char *k = lua_tolstring(L, -1, &klen);
    cand->endpoint = arena_strndup(a, e, elen);
    cand->sk = arena_strndup(a, k, klen);
    lua_pop(L, 2);
    if (!cand->endpoint || !cand->sk) luaL_error(L, "out of memory");
    lua_getfield(L, idx, "id");
    int isint = 0;
    lua_Integer id = lua_tointegerx(L, -1, &isint);
    cand->id = isint ? (int64_t)id : 0;
    lua_pop(L, 1);
    cand->connect_timeout = opt_timeout(L, idx, "connect_timeout");
    cand->timeout = opt_timeout(L, idx, "timeout");
    cand->stream_timeout = opt_timeout(L, idx, "stream_timeout");
    cand->idle_timeout = opt_timeout(L, idx, "idle_timeout");
}

static int pick_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    arena_t *a = http_request_arena(c->req->http);
    push_hook(L, c->req, "pick_upstream");
    push_req(L, c);
    lua_api_push_upstreams(L, &c->h->host);
    lua_call(L, 2, 2);
    int v = lua_gettop(L) - 1;
    if (!lua_toboolean(L, v)) {
        const char *m = lua_tostring(L, v + 1);
        return luaL_error(L, "%s", m ? m : "pick_upstream returned no upstream");
    }
    if (!lua_istable(L, v)) return luaL_error(L, "pick_upstream returned an invalid upstream");
    /* One upstream is a table with an endpoint; anything else is taken as a list. */
    int single = lua_getfield(L, v, "endpoint") != LUA_TNIL;
    lua_pop(L, 1);
    if (single) {
        c->cands = arena_alloc(a, sizeof *c->cands);
        if (!c->cands) return luaL_error(L, "out of memory");
        copy_candidate(L, c, v, &c->cands[0]);
        c->n_cands = 1;
        return 0;
    }
    lua_Integer n = luaL_len(L, v);
    if (n <= 0) return luaL_error(L, "pick_upstream returned no upstream");
    if ((lua_Unsigned)n > 100000) return luaL_error(L, "pick_upstream returned too many upstreams");
    c->cands = arena_alloc(a, (size_t)n * sizeof *c->cands);
    if (!c->cands) return luaL_error(L, "out of memory");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, v, i);
        copy_candidate(L, c, lua_gettop(L), &c->cands[i - 1]);
        lua_pop(L, 1);
    }
    c->n_cands = (size_t)n;
    return 0;
}

int hooks_pick_upstream(hooks_t *h, route_req_t *req, route_candidate_t **out, size_t *n,
                        const char **message) {
    call_t c = {.h = h, .req = req};
    char *err = NULL;
    *out = NULL;
    *n = 0;
    if (run_call(&c, pick_p, &err) != 0) {
        /* "No upstream" is the operator's configuration, not a hook failure. */
        route_log(LOG_WARN, "hooks: pick_upstream: %s", err);
        *message = arena_strdup(http_request_arena(req->http), err);
        free(err);
        return -1;
    }
    *out = c.cands;
    *n = c.n_cands;
    return 0;
}

/* ---- on_response ---- */

static void push_upstream_ref(lua_State *L, int64_t id, const char *endpoint) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)id);
    lua_setfield(L, -2, "id");
    set_str(L, "endpoint", endpoint);
}

static void push_res(lua_State *L, const route_res_t *res) {
    lua_createtable(L, 0, 12);
    lua_pushinteger(L, res->status);
    lua_setfield(L, -2, "status");
    if (res->upstream_id > 0 || res->upstream_endpoint) {
        push_upstream_ref(L, res->upstream_id, res->upstream_endpoint);
        lua_setfield(L, -2, "upstream");
    }
    set_str(L, "model", res->model);
    if (res->content) {
        lua_pushlstring(L, res->content, res->content_len);
        lua_setfield(L, -2, "content");
    }
    if (res->has_usage) {
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, (lua_Integer)res->prompt_tokens);
        lua_setfield(L, -2, "prompt_tokens");
        lua_pushinteger(L, (lua_Integer)res->completion_tokens);
        lua_setfield(L, -2, "completion_tokens");
        lua_pushinteger(L, (lua_Integer)res->total_tokens);
        lua_setfield(L, -2, "total_tokens");
        lua_setfield(L, -2, "usage");
    }
    lua_pushinteger(L, (lua_Integer)res->elapsed_ns);
    lua_setfield(L, -2, "elapsed");
    lua_pushinteger(L, (lua_Integer)res->ttfb_ns);
    lua_setfield(L, -2, "ttfb");
    set_str(L, "error", res->error);
    lua_pushboolean(L, res->client_aborted);
    lua_setfield(L, -2, "client_aborted");
    lua_createtable(L, (int)res->n_attempts, 0);
    for (size_t i = 0; i < res->n_attempts; i++) {
        const route_attempt_t *at = &res->attempts[i];
        lua_createtable(L, 0, 4);
        push_upstream_ref(L, at->upstream_id, at->endpoint);
        lua_setfield(L, -2, "upstream");
        lua_pushinteger(L, at->status);
        lua_setfield(L, -2, "status");
        set_str(L, "error", at->error);
        lua_pushboolean(L, at->failed);
        lua_setfield(L, -2, "failed");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "attempts");
}

static int on_response_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    push_hook(L, c->req, "on_response");
    push_req(L, c);
    push_res(L, c->res);
    lua_call(L, 2, 0);
    return 0;
}

static char *dup_or_null(const char *s, size_t n) {
    if (!s) return NULL;
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* What the default on_response records, for when the operator's hook failed before it did:
 * every exchange that passed authorize leaves a row. */
static void record_from_c(hooks_t *h, route_req_t *req, const route_res_t *res,
                          const char *hook_error) {
    store_t *s = h->ctx ? h->ctx->store : NULL;
    if (!s) return;
    store_record_t *r = store_record_new();
    if (!r) {
        route_log(LOG_ERROR, "hooks: out of memory, record %s lost", req->id);
        return;
    }
    http_request_t *hr = req->http;
    memcpy(r->id, req->id, sizeof r->id);
    r->id[sizeof r->id - 1] = '\0';
    r->created_at = util_now_wall_ns();
    const char *ip = http_request_client_ip(hr);
    r->ip = dup_or_null(ip, strlen(ip));
    size_t body_len = 0;
    const char *body = http_request_body(hr, &body_len);
    r->body = dup_or_null(body, body_len);
    r->body_len = body_len;
    if (res->content) {
        r->response = dup_or_null(res->content, res->content_len);
        r->response_len = res->content_len;
    }
    const char *model = req->model ? req->model : res->model ? res->model : http_request_path(hr);
    if (model) r->model = dup_or_null(model, strlen(model));
    r->status = res->status;
    r->upstream_id = res->upstream_id;
    if (res->upstream_endpoint)
        r->upstream_endpoint = dup_or_null(res->upstream_endpoint, strlen(res->upstream_endpoint));
    if (res->has_usage) {
        r->prompt_tokens = res->prompt_tokens;
        r->completion_tokens = res->completion_tokens;
        r->total_tokens = res->total_tokens;
    }
    r->elapsed_ns = res->elapsed_ns;
    r->response_time_ns = res->ttfb_ns;
    const route_header_t *ua = http_request_header(hr, "user-agent");
    if (ua && ua->value) r->user_agent = dup_or_null(ua->value, ua->value_len);
    /* The row says why the hook's own record is missing when nothing else went wrong. */
    if (res->error) {
        r->error = dup_or_null(res->error, strlen(res->error));
    } else if (hook_error) {
        size_t n = strlen(hook_error) + 32;
        r->error = malloc(n);
        if (r->error) snprintf(r->error, n, "on_response hook: %s", hook_error);
    }
    if (!r->body_len && r->body) {
        free(r->body);
        r->body = NULL;
    }
    store_loop_record(s, r);
}

/* The default's counting rules, for when the hook failed before it counted. */
static void count_from_c(hooks_t *h, const route_res_t *res) {
    store_t *s = h->ctx ? h->ctx->store : NULL;
    if (!s) return;
    for (size_t i = 0; i < res->n_attempts; i++)
        if (res->attempts[i].failed && res->attempts[i].upstream_id > 0)
            store_loop_upstream_result(s, res->attempts[i].upstream_id, 0);
    int last_failed = res->n_attempts && res->attempts[res->n_attempts - 1].failed;
    if (res->upstream_id > 0 && res->status >= 200 && res->status < 400 && !res->client_aborted &&
        !last_failed)
        store_loop_upstream_result(s, res->upstream_id, 1);
}

void hooks_on_response(hooks_t *h, route_req_t *req, const route_res_t *res) {
    call_t c = {.h = h, .req = req, .res = res};
    unsigned records = h->host.n_records, counts = h->host.n_counts;
    char *err = NULL;
    if (run_call(&c, on_response_p, &err) == 0) return;
    route_log(LOG_ERROR, "hooks: on_response failed for request %s: %s", req->id, err);
    if (h->host.n_records == records) record_from_c(h, req, res, err);
    if (h->host.n_counts == counts) count_from_c(h, res);
    free(err);
}
