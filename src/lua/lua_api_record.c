/* lua_api_record.c: route.record{} (an extra row written by a script) and the columns a
 * script adds to C's own row through res.record.
 *
 * Owns: reading a Lua table of record columns into a store_record_t, with its types and the
 * one time unit (seconds as numbers; *_ns integer nanoseconds).
 * Must not: build C's own row (records.c) or count (route.upstream_success/failed are in
 * lua_api_util.c), call SQLite, or leak a half-read record when a field raises. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "route/lua_api.h"
#include "route/store.h"
#include "route/util.h"

#define RECORD_BOX_MT "route.record_box"

static lua_api_host_t *host_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

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

/* A string field replaces *dst (the record's) when set; numbers are accepted as text. */
static void field_str(lua_State *L, int t, store_record_t *r, const char *name, char **dst,
                      size_t *len_out) {
    int type = lua_getfield(L, t, name);
    if (type == LUA_TSTRING || type == LUA_TNUMBER) {
        size_t len = 0;
        const char *v = lua_tolstring(L, -1, &len);
        if (store_record_set_string(r, dst, v, len) != 0)
            luaL_error(L, "route.record: out of memory");
        if (len_out) *len_out = len;
    } else if (type != LUA_TNIL) {
        luaL_error(L, "route.record: field '%s' must be a string, not %s", name,
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

/* A number field (scaled by `scale`, for seconds given where nanoseconds are stored). Returns
 * 1 when set. */
static int field_num(lua_State *L, int t, const char *name, double scale, int64_t *dst) {
    if (lua_getfield(L, t, name) == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    int isint = 0;
    lua_Integer i = lua_tointegerx(L, -1, &isint);
    if (isint && scale == 1) {
        *dst = (int64_t)i;
    } else if (lua_isnumber(L, -1)) {
        lua_Number d = lua_tonumber(L, -1) * scale;
        if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18)
            luaL_error(L, "route.record: field '%s' is out of range", name);
        *dst = (int64_t)d;
    } else {
        luaL_error(L, "route.record: field '%s' must be a number, not %s", name,
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return 1;
}

void lua_api_record_apply(lua_State *L, int t, store_record_t *r) {
    t = lua_absindex(L, t);
    field_str(L, t, r, "ip", &r->ip, NULL);
    field_str(L, t, r, "body", &r->body, &r->body_len);
    field_str(L, t, r, "response", &r->response, &r->response_len);
    field_str(L, t, r, "model", &r->model, NULL);
    field_str(L, t, r, "upstream_endpoint", &r->upstream_endpoint, NULL);
    field_str(L, t, r, "user_agent", &r->user_agent, NULL);
    field_str(L, t, r, "error", &r->error, NULL);
    int64_t v;
    if (field_num(L, t, "status", 1, &v)) r->status = (int)v;
    field_num(L, t, "upstream_id", 1, &r->upstream_id);
    /* A count the script gives is a count, also on a row C wrote without usage. */
    if (field_num(L, t, "prompt_tokens", 1, &r->prompt_tokens) |
        field_num(L, t, "completion_tokens", 1, &r->completion_tokens) |
        field_num(L, t, "total_tokens", 1, &r->total_tokens))
        r->usage_missing = 0;
    field_num(L, t, "cached_tokens", 1, &r->cached_tokens);
    field_num(L, t, "reasoning_tokens", 1, &r->reasoning_tokens);
    /* Seconds, as every time in Lua; the *_ns names take integer nanoseconds and win. */
    field_num(L, t, "elapsed", 1e9, &r->elapsed_ns);
    field_num(L, t, "response_time", 1e9, &r->response_time_ns);
    field_num(L, t, "elapsed_ns", 1, &r->elapsed_ns);
    field_num(L, t, "response_time_ns", 1, &r->response_time_ns);
}

static int l_record(lua_State *L) {
    lua_api_host_t *host = host_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    store_t *s = host && host->ctx ? host->ctx->store : NULL;
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
    lua_api_record_apply(L, 1, r);

    box->r = NULL; /* the store owns it from here */
    /* The request's own id: this row replaces the one C wrote (scripts that record the
     * exchange themselves, as the defaults once did). Any other id is an extra row. */
    if (host->req && strcmp(r->id, host->req->id) == 0) host->req->recorded_own = 1;
    store_loop_record(s, r);
    return 0;
}

void lua_api_open_record(lua_State *L, lua_api_host_t *host) {
    if (luaL_newmetatable(L, RECORD_BOX_MT)) {
        lua_pushcfunction(L, record_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, l_record, 1);
    lua_setfield(L, -2, "record");
}
