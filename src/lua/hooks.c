/* hooks.c: the three hook calls.
 *
 * Owns: calling authorize / pick_upstream / on_response, natively or in Lua with the
 * request's one Lua object (lua_req.c), reading their answers (verdict, candidate list, veto
 * or additions to the row), pinning each request to the hook set it started with, and ending
 * the request's object.
 * Must not: build records or count (records.c does, whatever a hook does), do network or
 * file I/O, keep a request reachable from Lua after it ended, or log a key or a token.
 *
 * How a hook is called: a hook is a function value in the table the request pinned. When that
 * value is one of route.defaults' C functions (default_hooks.c; hooks_load.c checks the
 * values by identity once per loaded table), calling it needs no Lua at all, as a C function
 * needs no Lua frame when Lua calls it: C runs the implementation directly, with no protected
 * call, no req object and no upstream tables. Any other value (an operator's function, a Lua
 * wrapper around a default) runs in Lua, and a request gets its req object on the first hook
 * that does. This is not a fast path for the embedded script: it is what calling a C
 * function value means, for whichever table holds one; an operator who overrides one hook
 * runs that one in Lua and keeps the other two in C. */
#include "hooks_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "route/util.h"

typedef struct call {
    hooks_t *h;
    route_req_t *req;

    /* authorize */
    int allowed, status;
    const char *message;
    /* pick_upstream */
    route_candidate_t *cands;
    size_t n_cands;
    /* on_response */
    const route_res_t *res;
    store_record_t *rec;
    lua_res_t *res_obj;
    int veto;
} call_t;

/* A request keeps the hook set it started with, so a reload in the middle of it (between
 * authorize and on_response) does not hand it half to the old script, half to the new. */
static hookset_t *pin(hooks_t *h, route_req_t *req) {
    if (!req->hooks) {
        req->hooks = h->current;
        h->current->refs++;
    }
    return req->hooks;
}

void hookset_unpin(hooks_t *h, hookset_t *s) {
    if (--s->refs > 0) return;
    for (hookset_t **pp = &h->retired; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    luaL_unref(h->L, LUA_REGISTRYINDEX, s->table_ref);
    free(s);
}

static void push_hook(lua_State *L, route_req_t *req, const char *name) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, req->hooks->table_ref);
    if (!lua_istable(L, -1)) luaL_error(L, "hooks are not loaded");
    lua_getfield(L, -1, name);
    if (!lua_isfunction(L, -1)) luaL_error(L, "no '%s' hook", name);
    lua_remove(L, -2);
}

static int run_call(call_t *c, lua_CFunction fn, char **err) {
    hooks_t *h = c->h;
    h->host.req = c->req;
    int rc = vm_run_protected(h, fn, c, err);
    lua_api_call_done(h->L, &h->host);
    h->host.req = NULL;
    return rc;
}

/* ---- authorize ---- */

static int authorize_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    push_hook(L, c->req, "authorize");
    lua_req_push(L, c->req);
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
    if (pin(h, req)->c_default & HOOK_AUTHORIZE)
        return default_authorize(&h->host, req, status, message);
    call_t c = {.h = h, .req = req};
    char *err = NULL;
    if (run_call(&c, authorize_p, &err) != 0) {
        route_log_limited(&h->authorize_log, LOG_ERROR, "hooks: authorize failed: %s", err);
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

/* Fills cand from the upstream table at idx. The sk and endpoint point into Lua strings,
 * pinned to the request (pins at index pins) so they live as long as it: no copy. A cached
 * upstream table (metatable at index mt) with no per-call fields added has no timeouts. */
static void read_candidate(lua_State *L, int idx, int pins, int mt, int overlay_used,
                           route_candidate_t *cand) {
    if (!lua_istable(L, idx)) luaL_error(L, "pick_upstream returned an invalid upstream");
    lua_getfield(L, idx, "endpoint");
    lua_getfield(L, idx, "sk");
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "pick_upstream returned an invalid upstream");
    cand->endpoint = (char *)lua_tostring(L, -2);
    cand->sk = (char *)lua_tostring(L, -1);
    lua_Integer n = (lua_Integer)lua_rawlen(L, pins);
    lua_rawseti(L, pins, n + 2);
    lua_rawseti(L, pins, n + 1);
    lua_getfield(L, idx, "id");
    int isint = 0;
    lua_Integer id = lua_tointegerx(L, -1, &isint);
    cand->id = isint ? (int64_t)id : 0;
    lua_pop(L, 1);
    if (!overlay_used && lua_getmetatable(L, idx)) {
        int cached = lua_rawequal(L, -1, mt);
        lua_pop(L, 1);
        if (cached) {
            cand->connect_timeout = cand->timeout = cand->stream_timeout = cand->idle_timeout = -1;
            return;
        }
    }
    cand->connect_timeout = opt_timeout(L, idx, "connect_timeout");
    cand->timeout = opt_timeout(L, idx, "timeout");
    cand->stream_timeout = opt_timeout(L, idx, "stream_timeout");
    cand->idle_timeout = opt_timeout(L, idx, "idle_timeout");
}

static int pick_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    arena_t *a = http_request_arena(c->req->http);
    push_hook(L, c->req, "pick_upstream");
    lua_req_push(L, c->req);
    lua_api_push_upstreams(L, &c->h->host);
    lua_call(L, 2, 2);
    int v = lua_gettop(L) - 1;
    if (!lua_toboolean(L, v)) {
        const char *m = lua_tostring(L, v + 1);
        return luaL_error(L, "%s", m ? m : "pick_upstream returned no upstream");
    }
    if (!lua_istable(L, v)) return luaL_error(L, "pick_upstream returned an invalid upstream");
    lua_req_push_pins(L, c->req);
    int pins = lua_gettop(L);
    luaL_getmetatable(L, LUA_API_UPSTREAM_MT);
    int mt = lua_gettop(L);
    int overlay_used = c->h->host.overlay_used;
    /* One upstream is a table with an endpoint; anything else is taken as a list. */
    int single = lua_getfield(L, v, "endpoint") != LUA_TNIL;
    lua_pop(L, 1);
    if (single) {
        c->cands = arena_alloc(a, sizeof *c->cands);
        if (!c->cands) return luaL_error(L, "out of memory");
        read_candidate(L, v, pins, mt, overlay_used, &c->cands[0]);
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
        read_candidate(L, lua_gettop(L), pins, mt, overlay_used, &c->cands[i - 1]);
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
    int rc = pin(h, req)->c_default & HOOK_PICK_UPSTREAM
                 ? default_pick_upstream(&h->host, req, &c.cands, &c.n_cands, &err)
                 : run_call(&c, pick_p, &err);
    if (rc != 0) {
        /* "No upstream" is the operator's configuration, not a hook failure. */
        route_log_limited(&h->pick_log, LOG_WARN, "hooks: pick_upstream: %s", err);
        *message = arena_strdup(http_request_arena(req->http), err);
        free(err);
        return -1;
    }
    *out = c.cands;
    *n = c.n_cands;
    return 0;
}

/* ---- on_response ---- */

static int on_response_p(lua_State *L) {
    call_t *c = lua_touserdata(L, 1);
    push_hook(L, c->req, "on_response");
    lua_req_push(L, c->req);
    lua_res_push(L, c->res, c->req->id, &c->res_obj);
    lua_call(L, 2, 1);
    /* `return false` vetoes the row; nothing (nil) or true keeps it. */
    c->veto = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
    if (lua_res_finish(L, c->res_obj, c->rec)) c->veto = 1;
    return 0;
}

void hooks_on_response(hooks_t *h, route_req_t *req, const route_res_t *res, store_record_t **rec) {
    if (pin(h, req)->c_default & HOOK_ON_RESPONSE) {
        /* Nothing to observe unless it failed; a row an earlier Lua hook wrote itself
         * (route.record{id = req.id}) still replaces C's. */
        if (res->error) default_on_response(&h->host, req, res);
        if (req->recorded_own && rec && *rec) {
            store_record_free(*rec);
            *rec = NULL;
        }
        return;
    }
    call_t c = {.h = h, .req = req, .res = res, .rec = rec ? *rec : NULL};
    char *err = NULL;
    int rc = run_call(&c, on_response_p, &err);
    lua_res_end(h->L, c.res_obj);
    int own = req->recorded_own;
    if (rc != 0) {
        route_log_limited(&h->on_response_log, LOG_ERROR,
                          "hooks: on_response failed for request %s: %s", req->id, err);
        store_record_t *r = rec ? *rec : NULL;
        /* The row says why the hook's additions are missing when nothing else went wrong. */
        if (r && !own && (!r->error || !r->error[0])) {
            size_t n = strlen(err) + 32;
            char *e = malloc(n);
            if (e) {
                snprintf(e, n, "on_response hook: %s", err);
                free(r->error);
                r->error = e;
            }
        }
        free(err);
        c.veto = 0;
    }
    if (rec && *rec && (c.veto || own)) {
        store_record_free(*rec);
        *rec = NULL;
    }
}

void hooks_release(hooks_t *h, route_req_t *req) {
    lua_req_end(h->L, req);
    if (req->hooks) {
        hookset_unpin(h, req->hooks);
        req->hooks = NULL;
    }
}
