/* lua_api.h: the interface between the hook machinery (src/lua/hooks*.c, lua_vm.c,
 * lua_req.c) and the `route` module scripts call, one file per group of functions
 * (src/lua/lua_api_*.c, assembled by lua_api.c). Nothing outside src/lua/ and the hooks'
 * unit test includes this. */
#ifndef ROUTE_LUA_API_H
#define ROUTE_LUA_API_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "route/ctx.h"
#include "route/hooks.h"
#include "route/store.h"

/* The counters of one upstream as last written into its cached Lua table. */
typedef struct lua_api_upstream_seen {
    int64_t id, success_count, failed_count, last_success; /* last_success 0: never */
} lua_api_upstream_seen_t;

/* What the route module needs from its owner. It lives inside the hooks_t, so every module
 * function reaches it through an upvalue rather than a global. */
typedef struct lua_api_host {
    route_ctx_t *ctx;
    route_req_t *req; /* the request whose hook runs now, or NULL (for redaction) */

    /* The upstream tables of pick_upstream, built once per store upstreams generation
     * (lua_api_upstreams.c); counters are patched in place when they move. */
    int ups_valid;
    uint64_t ups_generation;
    int ups_ref; /* registry: array of the cached upstream tables */
    size_t ups_n;
    lua_api_upstream_seen_t *ups_seen;
    int overlay_used; /* a hook added fields to a cached upstream table this call */

    /* The default hooks' own state (default_hooks.c): the loop's PRNG for the random
     * policies (xoshiro256**, seeded from util_random_bytes), and the stored `noauth` key
     * as of a config generation. */
    uint64_t rng[4];
    int noauth_valid, noauth_stored;
    uint64_t noauth_generation;
} lua_api_host_t;

/* Creates the route module once per state (global `route`, package.loaded.route, with an
 * empty route.shared) and puts cjson / cjson.safe in package.preload. Raises on error: call
 * it inside a protected call. */
void lua_api_open(lua_State *L, lua_api_host_t *host);
/* Frees what the host holds outside the Lua state (after lua_close). */
void lua_api_close(lua_api_host_t *host);

/* Each group adds its functions to the table on top of the stack (the route module). */
void lua_api_open_config(lua_State *L, lua_api_host_t *host);    /* lua_api_config.c */
void lua_api_open_upstreams(lua_State *L, lua_api_host_t *host); /* lua_api_upstreams.c */
void lua_api_open_record(lua_State *L, lua_api_host_t *host);    /* lua_api_record.c */
void lua_api_open_http(lua_State *L, lua_api_host_t *host);      /* lua_api_http.c */
void lua_api_open_util(lua_State *L, lua_api_host_t *host);      /* lua_api_util.c */

void lua_api_open_defaults(lua_State *L, lua_api_host_t *host); /* default_hooks.c */

/* Sets route.defaults to the table at idx (the embedded default hooks, for scripts that
 * wrap them). Raises on error. */
void lua_api_set_defaults(lua_State *L, int idx);

/* Pushes the upstream snapshot for pick_upstream: a fresh array (a script may sort it in
 * place) of cached tables {id, sk, endpoint, success_count, failed_count,
 * last_call_success_time (float seconds, nil when never)}. Fields a hook adds to one of those
 * tables (timeouts) last for the current hook call only. Raises on error. */
void lua_api_push_upstreams(lua_State *L, lua_api_host_t *host);
/* The metatable of the cached upstream tables (in the registry under this name). */
#define LUA_API_UPSTREAM_MT "route.upstream"
/* A hook call ended: forgets the per-call fields added to cached upstream tables. Never
 * raises. */
void lua_api_call_done(lua_State *L, lua_api_host_t *host);

/* ---- the default hooks in C (default_hooks.c) ----
 * authorize, pick_upstream and on_response as scripts/route.lua documents them, written in C.
 * Each exists twice over one implementation: as a C function value, route.defaults.<name>
 * (what the embedded route.lua returns, and what an operator's script may wrap), and as a
 * native entry that hooks.c calls directly when a request's hook table holds that very
 * function value, with no Lua at all. */

/* Pushes a fresh table {authorize, pick_upstream, on_response} of the C functions (the same
 * function values every time, so a hook table can be checked against them by identity).
 * Raises on error. */
void lua_api_push_c_defaults(lua_State *L);

/* One upstream as the policies see it; index is its position in the caller's list. */
typedef struct default_upstream {
    int64_t id, success_count, failed_count;
    double last_success; /* float seconds since the epoch, as Lua sees it */
    int has_last_success;
    size_t index;
} default_upstream_t;

/* Orders v[0..n) in place for policy (NULL or "": "main") and sets *out_n to how many are
 * kept, in front: main by health (fewest failures, then most successes, then id);
 * round_robin by oldest last success, never-used first, then id; random a shuffle; the
 * _available forms first drop upstreams with failures. rng is the caller's PRNG state.
 * Returns 0, or -1 with the message of route.lua's pick_upstream in err. */
/* Whether the default pick_upstream knows this policy name (NULL or "" is "main"). */
int default_policy_known(const char *policy);
int default_policy_order(const char *policy, default_upstream_t *v, size_t n, uint64_t rng[4],
                         size_t *out_n, char *err, size_t err_cap);

/* The native entries, for hooks.c. */
/* 1 allowed, 0 refused (*status 403, *message a static string). Never fails. */
int default_authorize(lua_api_host_t *host, route_req_t *req, int *status, const char **message);
/* 0 with an arena array of candidates (keys and endpoints copied into the request's arena), or
 * -1 with a malloc'd, redacted message in *err. */
int default_pick_upstream(lua_api_host_t *host, route_req_t *req, route_candidate_t **out,
                          size_t *n, char **err);
/* The error notice (FEISHU_WEBHOOK / MATRIX_API) when the exchange failed and the client did
 * not go away; nothing otherwise. */
void default_on_response(lua_api_host_t *host, route_req_t *req, const route_res_t *res);

/* Copies every column set in the table at idx (ip, body, response, model, upstream_endpoint,
 * user_agent, error, status, upstream_id, prompt_tokens, completion_tokens, total_tokens,
 * elapsed, response_time) into r; fields left nil keep r's value. Raises on a bad field. */
void lua_api_record_apply(lua_State *L, int idx, store_record_t *r);

/* A malloc'd copy of msg with every known secret (upstream keys, configured tokens, the
 * current request's bearer token) replaced by "***", for logs and error answers that carry
 * text a script produced. NULL only when out of memory. */
char *lua_api_redact(const lua_api_host_t *host, const char *msg, size_t len);

#endif
