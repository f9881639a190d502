/* lua_api_util.c: the small route functions: check_bearer, secure_compare, log, now, the
 * extra counter signals upstream_success / upstream_failed, and route.shared.
 *
 * Owns: the script's access to the one Bearer rule (auth.h, with the typed config's token
 * list), constant-time comparison, redacted logging, the clock (float seconds since the
 * epoch), and route.shared (created once per state, so it survives reloads).
 * Must not: count on its own (C counts every exchange in records.c; the signals here are
 * extras a script adds), log a key or a token, or call SQLite. */
#include <stdlib.h>

#include <lauxlib.h>

#include "route/auth.h"
#include "route/config.h"
#include "route/lua_api.h"
#include "route/store.h"
#include "route/util.h"

static lua_api_host_t *host_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* route.check_bearer(header) -> true | false, message: the rule /admin uses too. */
static int l_check_bearer(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    size_t len = 0;
    const char *header = lua_isnoneornil(L, 1) ? NULL : luaL_checklstring(L, 1, &len);
    const route_config_t *cfg = config_current(host->ctx);
    int verdict = auth_check_bearer(cfg->tokens, header, len);
    if (verdict == AUTH_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, auth_refusal_message(verdict));
    return 2;
}

static int upstream_result(lua_State *L, int success) {
    lua_api_host_t *host = host_of(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    store_t *s = host->ctx ? host->ctx->store : NULL;
    if (s && id > 0) store_loop_upstream_result(s, (int64_t)id, success);
    return 0;
}

static int l_upstream_success(lua_State *L) {
    return upstream_result(L, 1);
}

static int l_upstream_failed(lua_State *L) {
    return upstream_result(L, 0);
}

static int l_secure_compare(lua_State *L) {
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, util_secure_equal(a, alen, b, blen));
    return 1;
}

static int l_log(lua_State *L) {
    static const char *const names[] = {"debug", "info", "warn", "error", NULL};
    static const int levels[] = {LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR};
    lua_api_host_t *host = host_of(L);
    int level = levels[luaL_checkoption(L, 1, "info", names)];
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        if (i > 2) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    /* Script text can hold anything; logs must not hold keys or tokens. */
    char *safe = lua_api_redact(host, msg, len);
    if (!safe) return luaL_error(L, "route.log: out of memory");
    route_log(level, "lua: %s", safe);
    free(safe);
    return 0;
}

static int l_now(lua_State *L) {
    lua_pushnumber(L, (lua_Number)util_now_wall_ns() / 1e9);
    return 1;
}

void lua_api_open_util(lua_State *L, lua_api_host_t *host) {
    static const luaL_Reg funcs[] = {
        {"check_bearer", l_check_bearer},
        {"upstream_success", l_upstream_success},
        {"upstream_failed", l_upstream_failed},
        {"secure_compare", l_secure_compare},
        {"log", l_log},
        {"now", l_now},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, host);
    luaL_setfuncs(L, funcs, 1);
    /* Created once per state: reloads load new hooks into this same state, so whatever a
     * script keeps here survives them. */
    lua_newtable(L);
    lua_setfield(L, -2, "shared");
}
