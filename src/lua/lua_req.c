/* lua_req.c: the request and response objects hooks see.
 *
 * Owns: one lazy `req` object per request (a userdata created by the first hook that runs in
 * Lua and passed to every Lua hook of that request; a request whose hooks are all C defaults
 * never gets one): each field is read from the request through the http.h
 * accessors on first access and then cached; `req.headers` is itself lazy (a header is looked
 * up when read, the whole set copied only for pairs()); `req.ctx` is a table that lives from
 * authorize to on_response. Also the `res` object of on_response, whose fields are built on
 * first access, and res.record, what the hook adds to the row C wrote (or false: the veto).
 * Must not: keep a pointer to a request or a response past its end (the objects a script
 * kept raise "request <id> has ended" instead), read struct fields of the request, or
 * queue records (records.c builds the row, proxy.c writes it). */
#include "hooks_internal.h"

#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "route/http.h"

#define REQ_MT     "route.req"
#define HEADERS_MT "route.req.headers"
#define RES_MT     "route.res"
#define REG_RES    "route.current_res"

enum { REQ_UV_CACHE = 1, REQ_UV_PINS = 2, REQ_N_UV = 2 };
enum { HDR_UV_REQ = 1, HDR_UV_CACHE = 2, HDR_UV_ALL = 3 };

typedef struct req_box {
    route_req_t *req; /* NULL once the request ended */
    char id[37];
} req_box_t;

struct lua_res {
    const route_res_t *res; /* NULL once on_response returned */
    char id[37];
};

/* The table in user value n of the userdata at idx, created on first use; pushed. */
static void push_uv_table(lua_State *L, int idx, int n, int narr, int nrec) {
    idx = lua_absindex(L, idx);
    if (lua_getiuservalue(L, idx, n) == LUA_TTABLE) return;
    lua_pop(L, 1);
    lua_createtable(L, narr, nrec);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, n);
}

/* Looks key (at kidx) up in user value n of the userdata at 1: pushes it and returns 1 when
 * cached, else pushes nothing and returns 0. */
static int cached(lua_State *L, int n, int kidx) {
    if (lua_getiuservalue(L, 1, n) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushvalue(L, kidx);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 2);
    return 0;
}

/* Caches the value on top under key kidx in user value n of the userdata at 1; leaves the
 * value on top. */
static int cache_top(lua_State *L, int n, int kidx) {
    push_uv_table(L, 1, n, 0, 4);
    lua_pushvalue(L, kidx);
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return 1;
}

static req_box_t *live_req(lua_State *L, int idx) {
    req_box_t *b = lua_touserdata(L, idx);
    if (!b) luaL_error(L, "not a request");
    if (!b->req) luaL_error(L, "request %s has ended", b->id);
    return b;
}

static void push_opt(lua_State *L, const char *s) {
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

/* ---- req ---- */

static int req_index(lua_State *L) {
    req_box_t *b = live_req(L, 1);
    if (cached(L, REQ_UV_CACHE, 2)) return 1;
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    const char *k = lua_tostring(L, 2);
    route_req_t *r = b->req;
    const http_request_t *hr = r->http;
    switch (k[0]) {
    case 'b':
        if (strcmp(k, "body") == 0) {
            size_t len = 0;
            const char *body = http_request_body(hr, &len);
            lua_pushlstring(L, body, len);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'c':
        if (strcmp(k, "client_ip") == 0) {
            push_opt(L, http_request_client_ip(hr));
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        if (strcmp(k, "ctx") == 0) {
            lua_createtable(L, 0, 4);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'h':
        if (strcmp(k, "headers") == 0) {
            lua_newuserdatauv(L, 0, 3);
            lua_pushvalue(L, 1);
            lua_setiuservalue(L, -2, HDR_UV_REQ);
            luaL_setmetatable(L, HEADERS_MT);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'i':
        if (strcmp(k, "id") == 0) {
            lua_pushstring(L, b->id);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'm':
        if (strcmp(k, "method") == 0) {
            push_opt(L, http_request_method(hr));
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        if (strcmp(k, "model") == 0) {
            if (!r->model) return 0;
            lua_pushstring(L, r->model);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'p':
        if (strcmp(k, "path") == 0) {
            push_opt(L, http_request_path(hr));
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 'q':
        if (strcmp(k, "query") == 0) {
            const char *q = http_request_query(hr);
            if (!q) return 0;
            lua_pushstring(L, q);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    case 's':
        if (strcmp(k, "stream") == 0) {
            lua_pushboolean(L, r->stream);
            return cache_top(L, REQ_UV_CACHE, 2);
        }
        break;
    }
    return 0;
}

/* Scripts may keep their own fields on req (or replace one for the hooks after them). */
static int req_newindex(lua_State *L) {
    live_req(L, 1);
    lua_settop(L, 3);
    return cache_top(L, REQ_UV_CACHE, 2) - 1;
}

static int req_tostring(lua_State *L) {
    req_box_t *b = lua_touserdata(L, 1);
    lua_pushfstring(L, "request %s%s", b->id, b->req ? "" : " (ended)");
    return 1;
}

/* ---- req.headers ---- */

static req_box_t *headers_req(lua_State *L) {
    lua_getiuservalue(L, 1, HDR_UV_REQ);
    req_box_t *b = live_req(L, -1);
    lua_pop(L, 1);
    return b;
}

static int headers_index(lua_State *L) {
    req_box_t *b = headers_req(L);
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    if (cached(L, HDR_UV_CACHE, 2)) return 1;
    size_t n = 0;
    const char *name = lua_tolstring(L, 2, &n);
    /* Names are stored lower-case; a script writing "Authorization" means the same one. */
    char lower[128];
    if (n < sizeof lower) {
        for (size_t i = 0; i <= n; i++)
            lower[i] = name[i] >= 'A' && name[i] <= 'Z' ? (char)(name[i] + 32) : name[i];
        name = lower;
    }
    const route_header_t *h = http_request_header(b->req->http, name);
    if (!h) return 0;
    lua_pushlstring(L, h->value ? h->value : "", h->value_len);
    return cache_top(L, HDR_UV_CACHE, 2);
}

static int headers_pairs(lua_State *L) {
    req_box_t *b = headers_req(L);
    if (lua_getiuservalue(L, 1, HDR_UV_ALL) != LUA_TTABLE) {
        lua_pop(L, 1);
        const http_request_t *hr = b->req->http;
        size_t n = http_request_header_count(hr);
        lua_createtable(L, 0, (int)n);
        for (size_t i = 0; i < n; i++) {
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
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, 1, HDR_UV_ALL);
    }
    lua_getglobal(L, "next");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_getfield(L, -1, LUA_GNAME);
        lua_getfield(L, -1, "next");
        lua_replace(L, -3);
        lua_pop(L, 1);
    }
    lua_insert(L, -2);
    lua_pushnil(L);
    return 3;
}

static int headers_newindex(lua_State *L) {
    headers_req(L);
    return luaL_error(L, "req.headers is read-only");
}

/* ---- res ---- */

static const route_res_t *live_res(lua_State *L) {
    lua_res_t *r = lua_touserdata(L, 1);
    if (!r->res) luaL_error(L, "the response of request %s is no longer available", r->id);
    return r->res;
}

static void push_upstream_ref(lua_State *L, int64_t id, const char *endpoint) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)id);
    lua_setfield(L, -2, "id");
    if (endpoint) {
        lua_pushstring(L, endpoint);
        lua_setfield(L, -2, "endpoint");
    }
}

static void push_attempts(lua_State *L, const route_res_t *res) {
    lua_createtable(L, (int)res->n_attempts, 0);
    for (size_t i = 0; i < res->n_attempts; i++) {
        const route_attempt_t *at = &res->attempts[i];
        lua_createtable(L, 0, 4);
        push_upstream_ref(L, at->upstream_id, at->endpoint);
        lua_setfield(L, -2, "upstream");
        lua_pushinteger(L, at->status);
        lua_setfield(L, -2, "status");
        if (at->error) {
            lua_pushstring(L, at->error);
            lua_setfield(L, -2, "error");
        }
        lua_pushboolean(L, at->failed);
        lua_setfield(L, -2, "failed");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static int res_index(lua_State *L) {
    const route_res_t *res = live_res(L);
    if (cached(L, 1, 2)) return 1;
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "status") == 0) {
        lua_pushinteger(L, res->status);
    } else if (strcmp(k, "upstream") == 0) {
        if (res->upstream_id <= 0 && !res->upstream_endpoint) return 0;
        push_upstream_ref(L, res->upstream_id, res->upstream_endpoint);
    } else if (strcmp(k, "model") == 0) {
        if (!res->model) return 0;
        lua_pushstring(L, res->model);
    } else if (strcmp(k, "content") == 0) {
        if (!res->content) return 0;
        lua_pushlstring(L, res->content, res->content_len);
    } else if (strcmp(k, "usage") == 0) {
        if (!res->has_usage) return 0;
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, (lua_Integer)res->prompt_tokens);
        lua_setfield(L, -2, "prompt_tokens");
        lua_pushinteger(L, (lua_Integer)res->completion_tokens);
        lua_setfield(L, -2, "completion_tokens");
        lua_pushinteger(L, (lua_Integer)res->total_tokens);
        lua_setfield(L, -2, "total_tokens");
        if (res->has_cached) {
            lua_pushinteger(L, (lua_Integer)res->cached_tokens);
            lua_setfield(L, -2, "cached_tokens");
        }
        if (res->has_reasoning) {
            lua_pushinteger(L, (lua_Integer)res->reasoning_tokens);
            lua_setfield(L, -2, "reasoning_tokens");
        }
    } else if (strcmp(k, "elapsed") == 0) {
        lua_pushnumber(L, (lua_Number)res->elapsed_ns / 1e9);
    } else if (strcmp(k, "ttfb") == 0) {
        lua_pushnumber(L, (lua_Number)res->ttfb_ns / 1e9);
    } else if (strcmp(k, "elapsed_ns") == 0) {
        lua_pushinteger(L, (lua_Integer)res->elapsed_ns);
    } else if (strcmp(k, "ttfb_ns") == 0) {
        lua_pushinteger(L, (lua_Integer)res->ttfb_ns);
    } else if (strcmp(k, "error") == 0) {
        if (!res->error) return 0;
        lua_pushstring(L, res->error);
    } else if (strcmp(k, "client_aborted") == 0) {
        lua_pushboolean(L, res->client_aborted);
    } else if (strcmp(k, "attempts") == 0) {
        push_attempts(L, res);
    } else if (strcmp(k, "record") == 0) {
        lua_createtable(L, 0, 2);
    } else {
        return 0;
    }
    return cache_top(L, 1, 2);
}

static int res_newindex(lua_State *L) {
    live_res(L);
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "record") == 0 &&
        !lua_istable(L, 3) && !(lua_isboolean(L, 3) && !lua_toboolean(L, 3)))
        return luaL_error(L, "res.record must be a table or false (no row), not %s",
                          luaL_typename(L, 3));
    lua_settop(L, 3);
    return cache_top(L, 1, 2) - 1;
}

/* ---- the interface ---- */

void lua_req_open(lua_State *L) {
    static const luaL_Reg req_mt[] = {{"__index", req_index},
                                      {"__newindex", req_newindex},
                                      {"__tostring", req_tostring},
                                      {NULL, NULL}};
    static const luaL_Reg headers_mt[] = {{"__index", headers_index},
                                          {"__newindex", headers_newindex},
                                          {"__pairs", headers_pairs},
                                          {NULL, NULL}};
    static const luaL_Reg res_mt[] = {
        {"__index", res_index}, {"__newindex", res_newindex}, {NULL, NULL}};
    luaL_newmetatable(L, REQ_MT);
    luaL_setfuncs(L, req_mt, 0);
    lua_pushliteral(L, "request");
    lua_setfield(L, -2, "__name");
    luaL_newmetatable(L, HEADERS_MT);
    luaL_setfuncs(L, headers_mt, 0);
    luaL_newmetatable(L, RES_MT);
    luaL_setfuncs(L, res_mt, 0);
    lua_pop(L, 3);
}

void lua_req_push(lua_State *L, route_req_t *req) {
    if (req->obj_ref > 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, req->obj_ref);
        return;
    }
    req_box_t *b = lua_newuserdatauv(L, sizeof *b, REQ_N_UV);
    b->req = NULL;
    memcpy(b->id, req->id, sizeof b->id);
    b->id[sizeof b->id - 1] = '\0';
    luaL_setmetatable(L, REQ_MT);
    lua_pushvalue(L, -1);
    req->obj_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    b->req = req;
}

void lua_req_push_pins(lua_State *L, route_req_t *req) {
    lua_req_push(L, req);
    push_uv_table(L, -1, REQ_UV_PINS, 4, 0);
    lua_remove(L, -2);
}

void lua_req_end(lua_State *L, route_req_t *req) {
    if (req->obj_ref <= 0) return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, req->obj_ref);
    req_box_t *b = lua_touserdata(L, -1);
    if (b) b->req = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, req->obj_ref);
    req->obj_ref = 0;
}

void lua_res_push(lua_State *L, const route_res_t *res, const char *req_id, lua_res_t **out) {
    lua_res_t *r = lua_newuserdatauv(L, sizeof *r, 1);
    r->res = NULL;
    snprintf(r->id, sizeof r->id, "%s", req_id);
    luaL_setmetatable(L, RES_MT);
    /* Anchored (one fixed slot, replaced by the next call) so it outlives the call even when a
     * script dropped it: lua_res_end must reach it to cut it off. */
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_RES);
    r->res = res;
    *out = r;
}

int lua_res_finish(lua_State *L, lua_res_t *r, store_record_t *rec) {
    (void)r;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_RES);
    int veto = 0;
    if (lua_getiuservalue(L, -1, 1) == LUA_TTABLE) {
        int t = lua_gettop(L);
        lua_getfield(L, t, "record");
        if (lua_isboolean(L, -1) && !lua_toboolean(L, -1))
            veto = 1;
        else if (lua_istable(L, -1) && rec)
            lua_api_record_apply(L, lua_gettop(L), rec);
        lua_settop(L, t);
    }
    lua_pop(L, 2);
    return veto;
}

void lua_res_end(lua_State *L, lua_res_t *r) {
    (void)L;
    /* Still anchored in REG_RES until the next on_response replaces it. */
    if (r) r->res = NULL;
}
