/* lua_api_upstreams.c: route.upstreams() and the `upstreams` argument of pick_upstream.
 *
 * Owns: the Lua tables of the upstream snapshot, built once per store upstreams generation
 * and kept in the registry; counters patched in place only when they moved; the per-call
 * overlay that keeps fields a hook adds to a shared table (timeouts) from leaking into the
 * next request.
 * Must not: call SQLite (store_loop_upstreams is the loop's cache), or log a key. */
#include <stdlib.h>

#include <lauxlib.h>

#include "route/lua_api.h"
#include "route/store.h"
#include "route/util.h"

#define UPSTREAM_MT LUA_API_UPSTREAM_MT
#define REG_OVERLAY "route.upstream_overlay"

static lua_api_host_t *host_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

static int64_t last_success_of(const store_upstream_t *u) {
    return u->has_last_success && !util_time_is_never(u->last_call_success_time)
               ? u->last_call_success_time
               : 0;
}

/* Raw sets: the table's __newindex is the per-call overlay, not for C's own fields. */
static void set_counters(lua_State *L, const store_upstream_t *u, lua_api_upstream_seen_t *seen) {
    lua_pushliteral(L, "success_count");
    lua_pushinteger(L, (lua_Integer)u->success_count);
    lua_rawset(L, -3);
    lua_pushliteral(L, "failed_count");
    lua_pushinteger(L, (lua_Integer)u->failed_count);
    lua_rawset(L, -3);
    int64_t last = last_success_of(u);
    lua_pushliteral(L, "last_call_success_time");
    if (last)
        lua_pushnumber(L, (lua_Number)last / 1e9);
    else
        lua_pushnil(L);
    lua_rawset(L, -3);
    seen->id = u->id;
    seen->success_count = u->success_count;
    seen->failed_count = u->failed_count;
    seen->last_success = last;
}

/* Fields absent from a cached table (a timeout, a script's own mark) are read from and written
 * to the overlay of the current hook call, so the table stays as C built it. */
static int upstream_index(lua_State *L) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, REG_OVERLAY) != LUA_TTABLE) return 0;
    lua_pushvalue(L, 1);
    if (lua_rawget(L, -2) != LUA_TTABLE) return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int upstream_newindex(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, REG_OVERLAY) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, REG_OVERLAY);
    }
    host->overlay_used = 1;
    lua_pushvalue(L, 1);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, 1);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    return 0;
}

static void rebuild(lua_State *L, lua_api_host_t *host, const store_upstream_list_t *l,
                    uint64_t generation) {
    size_t n = l ? l->n : 0;
    lua_api_upstream_seen_t *seen = n ? calloc(n, sizeof *seen) : NULL;
    if (n && !seen) luaL_error(L, "out of memory");
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const store_upstream_t *u = &l->items[i];
        lua_createtable(L, 0, 6);
        lua_pushinteger(L, (lua_Integer)u->id);
        lua_setfield(L, -2, "id");
        lua_pushstring(L, u->sk ? u->sk : "");
        lua_setfield(L, -2, "sk");
        lua_pushstring(L, u->endpoint ? u->endpoint : "");
        lua_setfield(L, -2, "endpoint");
        set_counters(L, u, &seen[i]);
        luaL_setmetatable(L, UPSTREAM_MT);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    /* Only now that nothing can raise does the host change. */
    if (host->ups_ref > 0) luaL_unref(L, LUA_REGISTRYINDEX, host->ups_ref);
    host->ups_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    free(host->ups_seen);
    host->ups_seen = seen;
    host->ups_n = n;
    host->ups_generation = generation;
    host->ups_valid = 1;
}

void lua_api_push_upstreams(lua_State *L, lua_api_host_t *host) {
    store_t *s = host && host->ctx ? host->ctx->store : NULL;
    const store_upstream_list_t *l = s ? store_loop_upstreams(s) : NULL;
    uint64_t generation = s ? store_loop_upstreams_generation(s) : 0;
    size_t n = l ? l->n : 0;
    int fresh = !host->ups_valid || host->ups_generation != generation || host->ups_n != n;
    for (size_t i = 0; !fresh && i < n; i++)
        fresh = host->ups_seen[i].id != l->items[i].id;
    if (fresh) rebuild(L, host, l, generation);

    lua_rawgeti(L, LUA_REGISTRYINDEX, host->ups_ref);
    int cache = lua_gettop(L);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, cache, (lua_Integer)i + 1);
        const store_upstream_t *u = &l->items[i];
        lua_api_upstream_seen_t *seen = &host->ups_seen[i];
        if (seen->success_count != u->success_count || seen->failed_count != u->failed_count ||
            seen->last_success != last_success_of(u))
            set_counters(L, u, seen);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_remove(L, cache);
}

void lua_api_call_done(lua_State *L, lua_api_host_t *host) {
    if (!host->overlay_used) return;
    host->overlay_used = 0;
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_OVERLAY);
}

static int l_upstreams(lua_State *L) {
    lua_api_push_upstreams(L, host_of(L));
    return 1;
}

void lua_api_open_upstreams(lua_State *L, lua_api_host_t *host) {
    luaL_newmetatable(L, UPSTREAM_MT);
    lua_pushcfunction(L, upstream_index);
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, upstream_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pop(L, 1);
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, l_upstreams, 1);
    lua_setfield(L, -2, "upstreams");
}
