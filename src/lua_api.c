/* lua_api.c: owns the `route` module that hook scripts call (config, upstreams, records,
 * counters, logging, time, route.shared) and the redaction of secrets from script text. It
 * must not run hooks or keep state outside the lua_State and the host struct hooks.c hands
 * it, and must never log a key or a token. Every function here runs on the event loop thread
 * inside a protected call, so raising a Lua error is the way to fail. */
#include "route/lua_api.h"
#include "route/upstream.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lualib.h>

#include "route/cli.h"
#include "route/store.h"
#include "route/util.h"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

#define RECORD_BOX_MT "route.record_box"

static lua_api_host_t *host_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

static store_t *store_of(const lua_api_host_t *host) {
    return host && host->ctx ? host->ctx->store : NULL;
}

/* ---- route.config ---- */

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
    if (key[0] == '\0') return luaL_argerror(L, 1, "empty key");
    store_t *s = store_of(host);
    if (!s) return luaL_error(L, "route.config.set: no database");
    store_loop_config_set(s, key, value);
    return 0;
}

/* ---- route.upstreams ---- */

void lua_api_push_upstreams(lua_State *L, lua_api_host_t *host) {
    store_t *s = store_of(host);
    const store_upstream_list_t *l = s ? store_loop_upstreams(s) : NULL;
    size_t n = l ? l->n : 0;
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
        lua_pushinteger(L, (lua_Integer)u->success_count);
        lua_setfield(L, -2, "success_count");
        lua_pushinteger(L, (lua_Integer)u->failed_count);
        lua_setfield(L, -2, "failed_count");
        if (u->has_last_success && !util_time_is_never(u->last_call_success_time)) {
            lua_pushnumber(L, (lua_Number)u->last_call_success_time / 1e9);
            lua_setfield(L, -2, "last_call_success_time");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static int l_upstreams(lua_State *L) {
    lua_api_push_upstreams(L, host_of(L));
    return 1;
}

/* ---- route.record ---- */

/* The record is malloc'd before its fields are read, and reading a field can raise; the box
 * frees it on collection unless it was handed to the store. */
typedef struct record_box {
    store_record_t *r;
} record_box_t;

static int record_box_gc(lua_State *L) {
    record_box_t *b = luaL_checkudata(L, 1, RECORD_BOX_MT);
    if (b->r) {
        store_record_free(b->r);
        b->r = NULL;
    }
    return 0;
}

/* A string field copied to malloc'd memory; nil gives NULL. Numbers are accepted as text. */
static char *record_str(lua_State *L, int t, const char *name, size_t *len_out) {
    lua_getfield(L, t, name);
    int type = lua_type(L, -1);
    char *out = NULL;
    size_t len = 0;
    if (type == LUA_TSTRING || type == LUA_TNUMBER) {
        const char *v = lua_tolstring(L, -1, &len);
        out = malloc(len + 1);
        if (!out) luaL_error(L, "route.record: out of memory");
        memcpy(out, v, len);
        out[len] = '\0';
    } else if (type != LUA_TNIL) {
        luaL_error(L, "route.record: field '%s' must be a string, not %s", name,
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    if (len_out) *len_out = len;
    return out;
}

static int64_t record_int(lua_State *L, int t, const char *name) {
    lua_getfield(L, t, name);
    int64_t v = 0;
    if (!lua_isnil(L, -1)) {
        int isint = 0;
        lua_Integer i = lua_tointegerx(L, -1, &isint);
        if (isint) {
            v = (int64_t)i;
        } else if (lua_isnumber(L, -1)) {
            /* Durations computed in float seconds * 1e9 arrive as floats. */
            lua_Number d = lua_tonumber(L, -1);
            if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18)
                luaL_error(L, "route.record: field '%s' is out of range", name);
            v = (int64_t)d;
        } else {
            luaL_error(L, "route.record: field '%s' must be a number, not %s", name,
                       luaL_typename(L, -1));
        }
    }
    lua_pop(L, 1);
    return v;
}

static int l_record(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    store_t *s = store_of(host);
    if (!s) return luaL_error(L, "route.record: no database");

    record_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->r = NULL;
    luaL_setmetatable(L, RECORD_BOX_MT);
    box->r = store_record_new();
    if (!box->r) return luaL_error(L, "route.record: out of memory");
    store_record_t *r = box->r;

    lua_getfield(L, 1, "id");
    if (lua_isnil(L, -1)) {
        util_uuid4(r->id);
    } else {
        size_t n = 0;
        const char *id = lua_tolstring(L, -1, &n);
        if (!id || n == 0 || n >= sizeof r->id)
            return luaL_error(L, "route.record: field 'id' must be a string of 1 to %d bytes",
                              (int)sizeof r->id - 1);
        memcpy(r->id, id, n);
        r->id[n] = '\0';
    }
    lua_pop(L, 1);

    r->created_at = util_now_wall_ns();
    r->ip = record_str(L, 1, "ip", NULL);
    r->body = record_str(L, 1, "body", &r->body_len);
    r->response = record_str(L, 1, "response", &r->response_len);
    r->model = record_str(L, 1, "model", NULL);
    r->upstream_endpoint = record_str(L, 1, "upstream_endpoint", NULL);
    r->user_agent = record_str(L, 1, "user_agent", NULL);
    r->error = record_str(L, 1, "error", NULL);
    r->status = (int)record_int(L, 1, "status");
    r->upstream_id = record_int(L, 1, "upstream_id");
    r->prompt_tokens = record_int(L, 1, "prompt_tokens");
    r->completion_tokens = record_int(L, 1, "completion_tokens");
    r->total_tokens = record_int(L, 1, "total_tokens");
    r->elapsed_ns = record_int(L, 1, "elapsed");
    r->response_time_ns = record_int(L, 1, "response_time");

    box->r = NULL; /* the store owns it from here */
    store_loop_record(s, r);
    host->n_records++;
    return 0;
}

/* ---- counters ---- */

static int upstream_result(lua_State *L, int success) {
    lua_api_host_t *host = host_of(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    store_t *s = store_of(host);
    if (s && id > 0) store_loop_upstream_result(s, (int64_t)id, success);
    host->n_counts++;
    return 0;
}

static int l_upstream_success(lua_State *L) {
    return upstream_result(L, 1);
}

static int l_upstream_failed(lua_State *L) {
    return upstream_result(L, 0);
}

/* ---- small helpers ---- */

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

/* route.http_post(url, body, headers): fire-and-forget, so a hook never waits on a webhook;
 * the outcome is only logged, and never with the URL's query (webhook URLs carry secrets).
 * Returns true, or false and why it could not start. */
static int l_http_post(lua_State *L) {
    lua_api_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    const char *url = luaL_checkstring(L, 1);
    size_t body_len;
    const char *body = luaL_optlstring(L, 2, "", &body_len);
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

void lua_api_open(lua_State *L, lua_api_host_t *host) {
    /* cjson is linked statically, so `require "cjson"` needs nothing on disk. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);

    if (luaL_newmetatable(L, RECORD_BOX_MT)) {
        lua_pushcfunction(L, record_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);

    static const luaL_Reg funcs[] = {
        {"upstreams", l_upstreams},
        {"record", l_record},
        {"upstream_success", l_upstream_success},
        {"upstream_failed", l_upstream_failed},
        {"secure_compare", l_secure_compare},
        {"log", l_log},
        {"now", l_now},
        {"http_post", l_http_post},
        {NULL, NULL},
    };
    static const luaL_Reg config_funcs[] = {
        {"get", l_config_get},
        {"set", l_config_set},
        {NULL, NULL},
    };

    lua_newtable(L);
    lua_pushlightuserdata(L, host);
    luaL_setfuncs(L, funcs, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, host);
    luaL_setfuncs(L, config_funcs, 1);
    lua_setfield(L, -2, "config");
    /* Created once per state: reloads load new hooks into this same state, so whatever a
     * script keeps here survives them. */
    lua_newtable(L);
    lua_setfield(L, -2, "shared");

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "route");
    lua_pop(L, 1);
    lua_setglobal(L, "route");
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

/* ---- redaction ---- */

typedef struct redact_buf {
    char *p;
    size_t len;
} redact_buf_t;

/* Replaces every occurrence of secret in *b. Returns -1 when out of memory. */
static int redact_one(redact_buf_t *b, const char *secret, size_t slen) {
    static const char mask[] = "***";
    /* Short strings would blank out ordinary words; "asis" is a mode, not a key. */
    if (slen < 4 || (slen == 4 && memcmp(secret, "asis", 4) == 0)) return 0;
    if (b->len < slen) return 0;
    size_t hits = 0;
    for (size_t i = 0; i + slen <= b->len;) {
        if (memcmp(b->p + i, secret, slen) == 0) {
            hits++;
            i += slen;
        } else {
            i++;
        }
    }
    if (!hits) return 0;
    size_t nlen = b->len - hits * slen + hits * (sizeof mask - 1);
    char *out = malloc(nlen + 1);
    if (!out) return -1;
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        if (i + slen <= b->len && memcmp(b->p + i, secret, slen) == 0) {
            memcpy(out + o, mask, sizeof mask - 1);
            o += sizeof mask - 1;
            i += slen;
        } else {
            out[o++] = b->p[i++];
        }
    }
    out[o] = '\0';
    free(b->p);
    b->p = out;
    b->len = o;
    return 0;
}

static int is_trim_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Each token of a comma-separated list, trimmed. */
static int redact_list(redact_buf_t *b, const char *list) {
    const char *p = list;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (n && is_trim_space(*s)) {
            s++;
            n--;
        }
        while (n && is_trim_space(s[n - 1]))
            n--;
        if (redact_one(b, s, n) < 0) return -1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

char *lua_api_redact(const lua_api_host_t *host, const char *msg, size_t len) {
    redact_buf_t b = {malloc(len + 1), len};
    if (!b.p) return NULL;
    memcpy(b.p, msg, len);
    b.p[len] = '\0';

    store_t *s = store_of(host);
    if (s) {
        const store_upstream_list_t *l = store_loop_upstreams(s);
        for (size_t i = 0; l && i < l->n; i++) {
            const char *sk = l->items[i].sk;
            if (sk && redact_one(&b, sk, strlen(sk)) < 0) goto oom;
        }
        const char *tokens = store_loop_config(s, "authorization");
        if (tokens && redact_list(&b, tokens) < 0) goto oom;
    }
    if (host && host->req && host->req->http) {
        const route_header_t *auth = http_request_header(host->req->http, "authorization");
        if (auth && auth->value) {
            const char *v = auth->value;
            size_t n = auth->value_len;
            if (n >= 6 && memcmp(v, "Bearer", 6) == 0) {
                v += 6;
                n -= 6;
            }
            while (n && *v == ' ') {
                v++;
                n--;
            }
            while (n && v[n - 1] == ' ')
                n--;
            if (redact_one(&b, v, n) < 0) goto oom;
        }
    }
    return b.p;
oom:
    free(b.p);
    return NULL;
}
