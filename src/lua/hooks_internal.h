/* hooks_internal.h: what the files of src/lua/ share and nothing else includes: the hooks_t
 * struct (the Lua state, its budgets, the loaded hook table), the protected-call runner of
 * lua_vm.c, and the request and response objects of lua_req.c. */
#ifndef ROUTE_HOOKS_INTERNAL_H
#define ROUTE_HOOKS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "route/hooks.h"
#include "route/lua_api.h"
#include "route/store.h"

#define REG_FOLDER_MODULES "route.folder_modules"
#define EMBEDDED_CHUNK     "=route.lua (embedded)"
#define SCRIPT_NAME        "route.lua"

/* One loaded hook table. Requests pin the set they started with (route_req_t.hooks), so a
 * reload in the middle of a request does not hand it half to the old script, half to the
 * new; a set that is no longer the current one lives until its last request is released. */
enum { HOOK_AUTHORIZE = 1, HOOK_PICK_UPSTREAM = 2, HOOK_ON_RESPONSE = 4 };
typedef struct hookset {
    int table_ref; /* registry: the merged hook table */
    /* HOOK_* bits: the table's value for that hook is route.defaults' own C function
     * (checked by identity when the table loaded), which hooks.c calls natively. */
    unsigned c_default;
    int refs;             /* pinned requests, plus one while it is the current set */
    struct hookset *next; /* in hooks_t.retired */
} hookset_t;

struct hooks {
    route_ctx_t *ctx;
    lua_State *L;
    char *scripts_dir; /* NULL: embedded hooks only */
    /* The folder's files the current set was loaded from (require finds helpers there), and
     * the one a load in progress reads. */
    struct script_snapshot *snap;
    const struct script_snapshot *loading_snap;
    lua_api_host_t host;
    hookset_t *current; /* what new requests pin */
    hookset_t *retired; /* replaced by a reload, still pinned by a request */

    /* Budgets of the current top-level call, re-read from config before each call so a -set
     * takes effect on the next request. */
    long long budget;    /* instructions */
    long long used;      /* instructions counted so far */
    int64_t deadline_ns; /* monotonic; 0: no time limit */
    double time_limit_ms;
    int loading;      /* a load or reload runs: no time limit */
    size_t mem_limit; /* bytes for the whole state */
    size_t mem_used;
    /* A failing hook fails every request: its log lines are rate-limited, one kind each. */
    log_limiter_t authorize_log, pick_log, on_response_log;
};

/* ---- hooks.c ---- */
/* Drops one pin of the set; the last one (of a retired set) unlinks it from h->retired, lets
 * go of its table and frees it. Never raises. */
void hookset_unpin(hooks_t *h, hookset_t *s);

/* ---- lua_vm.c ---- */
/* A fresh state with the budgeting allocator and count hook; NULL when out of memory. */
lua_State *vm_new_state(hooks_t *h);
/* Runs fn(ud) protected with the budgets in force (instructions, memory, time). Returns 0, or
 * -1 with a malloc'd, redacted message in *err (err may be NULL). */
int vm_run_protected(hooks_t *h, lua_CFunction fn, void *ud, char **err);

/* ---- lua_req.c ---- */
/* Registers the metatables (once per state). Raises on error. */
void lua_req_open(lua_State *L);
/* Pushes the request's object, creating it on the first hook of the request. Raises. */
void lua_req_push(lua_State *L, route_req_t *req);
/* The pin table of the request (created on demand): values C keeps pointers into (the sk and
 * endpoint strings of its candidates) live as long as the request. Raises. */
void lua_req_push_pins(lua_State *L, route_req_t *req);
/* The request ended: its object, wherever a script kept it, raises when read. Never raises. */
void lua_req_end(lua_State *L, route_req_t *req);

/* The response object of one on_response call. */
typedef struct lua_res lua_res_t;
/* Pushes a new response object for res; *out gets its handle for lua_res_end. Raises. */
void lua_res_push(lua_State *L, const route_res_t *res, const char *req_id, lua_res_t **out);
/* The hook returned: applies what it put in res.record to rec (when rec is not NULL) and tells
 * whether it vetoed the row (res.record = false). The object raises when read afterwards.
 * Runs inside the protected call (reading res.record can raise). */
int lua_res_finish(lua_State *L, lua_res_t *r, store_record_t *rec);
/* Detaches without reading (the hook failed). Never raises. */
void lua_res_end(lua_State *L, lua_res_t *r);

#endif
