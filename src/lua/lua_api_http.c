/* lua_api_http.c: route.http_post(url, body, headers).
 *
 * Owns: turning a script's webhook call into a fire-and-forget upstream_post, refusing
 * header injection.
 * Must not: wait for the answer (a hook never blocks on a webhook), or log the URL's query
 * (webhook URLs carry secrets). */
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "route/lua_api.h"
#include "route/upstream.h"

/* route.http_post(url, body, headers): fire-and-forget, so a hook never waits on a webhook;
 * the outcome is only logged, and never with the URL's query (webhook URLs carry secrets).
 * Returns true, or false and why it could not start. */
static int l_http_post(lua_State *L) {
    lua_api_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    const char *url = luaL_checkstring(L, 1);
    size_t body_len;
    const char *body = luaL_optlstring(L, 2, "", &body_len);
    /* luaL_buffinit pushes a placeholder: without this, a call with no headers table would
     * find that placeholder at index 3. */
    lua_settop(L, 3);
    luaL_Buffer headers;
    luaL_buffinit(L, &headers);
    int has_type = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            const char *value = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                                    ? lua_tostring(L, -1)
                                    : NULL;
            /* Header injection: a name or value with CR/LF would forge request lines. */
            if (name && value && !strpbrk(name, "\r\n:") && !strpbrk(value, "\r\n") &&
                strcasecmp(name, "host") != 0 && strcasecmp(name, "content-length") != 0) {
                if (strcasecmp(name, "content-type") == 0) has_type = 1;
                lua_pushfstring(L, "%s: %s\r\n", name, value);
                luaL_addvalue(&headers);
            }
            lua_pop(L, 1);
        }
    }
    if (!has_type) luaL_addstring(&headers, "Content-Type: application/json\r\n");
    luaL_pushresult(&headers);
    const char *why = NULL;
    if (upstream_post(host->ctx->pool, url, body, body_len, lua_tostring(L, -1), 10000, &why) !=
        0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, why ? why : "http_post failed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

void lua_api_open_http(lua_State *L, lua_api_host_t *host) {
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, l_http_post, 1);
    lua_setfield(L, -2, "http_post");
}
