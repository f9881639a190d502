/* lua_api.h: the interface between hooks.c (the Lua state, the hook calls, the budgets) and
 * lua_api.c (the `route` module scripts call). Nothing else includes this. */
#ifndef ROUTE_LUA_API_H
#define ROUTE_LUA_API_H

#include <stddef.h>

#include <lua.h>

#include "route/ctx.h"
#include "route/hooks.h"

/* What the route module needs from its owner. It lives inside the hooks_t, so every module
 * function reaches it through an upvalue rather than a global. */
typedef struct lua_api_host {
    route_ctx_t *ctx;
    route_req_t *req;   /* the request whose hook runs now, or NULL (for redaction) */
    unsigned n_records; /* route.record calls so far: a failing on_response that already */
    unsigned n_counts;  /* recorded or counted must not be recorded/counted again from C */
} lua_api_host_t;

/* Creates the route module once per state (global `route`, package.loaded.route, with an
 * empty route.shared) and puts cjson / cjson.safe in package.preload. Raises on error: call
 * it inside a protected call. */
void lua_api_open(lua_State *L, lua_api_host_t *host);

/* Sets route.defaults to the table at idx (the embedded default hooks, for scripts that
 * wrap them). Raises on error. */
void lua_api_set_defaults(lua_State *L, int idx);

/* Pushes the upstream snapshot: an array of {id, sk, endpoint, success_count, failed_count,
 * last_call_success_time (float seconds, nil when never)}. Raises on error. */
void lua_api_push_upstreams(lua_State *L, lua_api_host_t *host);

/* A malloc'd copy of msg with every known secret (upstream keys, configured tokens, the
 * current request's bearer token) replaced by "***", for logs and error answers that carry
 * text a script produced. NULL only when out of memory. */
char *lua_api_redact(const lua_api_host_t *host, const char *msg, size_t len);

#endif
