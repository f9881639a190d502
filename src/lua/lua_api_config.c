/* lua_api_config.c: route.config.get / route.config.set.
 *
 * Owns: the script's view of config_kvs (any key, typed or the script's own) and the -noauth
 * switch seen as the key `noauth`.
 * Must not: call SQLite (the loop's cache and the writer's queue through store.h), or log a
 * value (`authorization` holds tokens). */
#include <string.h>

#include <lauxlib.h>

#include "route/cli.h"
#include "route/lua_api.h"
#include "route/store.h"

static lua_api_host_t *host_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

static store_t *store_of(const lua_api_host_t *host) {
    return host && host->ctx ? host->ctx->store : NULL;
}

static int l_config_get(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    const char *key = luaL_checkstring(L, 1);
    /* -noauth is a flag, not a stored key: the default authorize asks for it here so an
     * operator's script sees the same switch. */
    if (strcmp(key, "noauth") == 0 && host->ctx && host->ctx->opts && host->ctx->opts->noauth) {
        lua_pushliteral(L, "true");
        return 1;
    }
    store_t *s = store_of(host);
    const char *v = s ? store_loop_config(s, key) : NULL;
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int l_config_set(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    const char *key = luaL_checkstring(L, 1);
    const char *value = luaL_checkstring(L, 2);
    store_t *s = store_of(host);
    if (!s) return luaL_error(L, "route.config.set: no database");
    const char *why = NULL;
    if (store_loop_config_set(s, key, value, &why) != 0)
        return luaL_error(L, "route.config.set: %s", why);
    return 0;
}

void lua_api_open_config(lua_State *L, lua_api_host_t *host) {
    static const luaL_Reg funcs[] = {
        {"get", l_config_get},
        {"set", l_config_set},
        {NULL, NULL},
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, host);
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, "config");
}
