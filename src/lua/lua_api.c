/* lua_api.c: assembles the `route` module from its groups (lua_api_config.c,
 * lua_api_upstreams.c, lua_api_record.c, lua_api_http.c, lua_api_util.c, and the default
 * hooks' C functions of default_hooks.c) and preloads cjson.
 *
 * Owns: the module table (global `route`, package.loaded.route), route.defaults, and what the
 * host holds outside the Lua state.
 * Must not: implement any route function itself (each group owns its own), run hooks, or keep
 * state outside the lua_State and the host struct hooks_t hands it. */
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "route/lua_api.h"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

void lua_api_open(lua_State *L, lua_api_host_t *host) {
    /* cjson is linked statically, so `require "cjson"` needs nothing on disk. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);

    lua_newtable(L);
    lua_api_open_config(L, host);
    lua_api_open_upstreams(L, host);
    lua_api_open_record(L, host);
    lua_api_open_http(L, host);
    lua_api_open_util(L, host);
    lua_api_open_defaults(L, host);
    lua_api_push_c_defaults(L);
    lua_setfield(L, -2, "defaults");

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "route");
    lua_pop(L, 1);
    lua_setglobal(L, "route");
}

void lua_api_close(lua_api_host_t *host) {
    free(host->ups_seen);
    host->ups_seen = NULL;
    host->ups_n = 0;
    host->ups_valid = 0;
    host->ups_ref = 0;
}

void lua_api_set_defaults(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "route");
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, idx);
        lua_setfield(L, -2, "defaults");
    }
    lua_pop(L, 2);
}
