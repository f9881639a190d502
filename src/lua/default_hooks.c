/* default_hooks.c: the default hooks (authorize, pick_upstream, on_response), in C.
 *
 * Owns: the Bearer rule of /v1 with the -noauth switch, the five load balance policies (main,
 * random, random_available, round_robin, round_robin_available) with their orderings,
 * tie-breaks and error messages, the error notices to FEISHU_WEBHOOK / MATRIX_API, the loop's
 * PRNG for the random policies, and route.defaults' C function values: one implementation
 * reached two ways, from Lua (a script that wraps a default) and natively from hooks.c (a
 * request whose hook table holds that very function value).
 * Must not: keep state outside the host struct (no globals: the PRNG is the loop's), block
 * (the notices are route.http_post's fire-and-forget upstream_post), call SQLite (the store's
 * loop cache and the typed config only), or log or send a key or a token. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "route/auth.h"
#include "route/config.h"
#include "route/http.h"
#include "route/lua_api.h"
#include "route/store.h"
#include "route/upstream.h"
#include "route/util.h"

/* The C function values, created once per state: identity against them is what tells
 * hooks_load.c that a hook table holds a default. */
#define REG_C_DEFAULTS "route.c_defaults"

/* Upstreams sorted on the stack up to this many; a longer list is malloc'd. */
#define STACK_UPSTREAMS 32

/* ---- the PRNG (xoshiro256**): one per loop, in the host ---- */

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, bound): the high half of a 64x64 product (bias below 2^-32 for any list). */
static size_t rng_below(uint64_t s[4], size_t bound) {
    return (size_t)(((unsigned __int128)rng_next(s) * bound) >> 64);
}

static void rng_seed(uint64_t s[4]) {
    if (util_random_bytes(s, 4 * sizeof s[0]) == 0 && (s[0] | s[1] | s[2] | s[3])) return;
    /* No getrandom: splitmix64 over the clock, which is enough to shuffle upstreams. */
    uint64_t x = (uint64_t)util_now_mono_ns() ^ (uint64_t)util_now_wall_ns();
    for (int i = 0; i < 4; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        s[i] = z ^ (z >> 31);
    }
}

/* ---- authorize ---- */

/* -noauth, or the stored key `noauth` = "true" (what route.config.get("noauth") answers),
 * read again only when the config generation moved. */
static int noauth(lua_api_host_t *host) {
    route_ctx_t *ctx = host->ctx;
    if (ctx->opts && ctx->opts->noauth) return 1;
    store_t *s = ctx->store;
    if (!s) return 0;
    uint64_t g = store_loop_config_generation(s);
    if (!host->noauth_valid || host->noauth_generation != g) {
        const char *v = store_loop_config(s, "noauth");
        host->noauth_stored = v && strcmp(v, "true") == 0;
        host->noauth_generation = g;
        host->noauth_valid = 1;
    }
    return host->noauth_stored;
}

/* The one Bearer rule (auth.c); header NULL when missing. */
static int check_bearer(lua_api_host_t *host, const char *header, size_t len) {
    return auth_check_bearer(config_current(host->ctx)->tokens, header, len);
}

/* A WebSocket handshake without Authorization (a browser's): the token in its subprotocol
 * list, by OpenAI's browser convention; refused as "not Bearer" when it has none. */
static int check_ws_protocol(lua_api_host_t *host, const char *value, size_t len) {
    return auth_check_ws_protocol(config_current(host->ctx)->tokens, value, len);
}

int default_authorize(lua_api_host_t *host, route_req_t *req, int *status, const char **message) {
    if (noauth(host)) return 1;
    const route_header_t *hd = http_request_header(req->http, "authorization");
    const route_header_t *ws = hd ? NULL : http_request_header(req->http, "sec-websocket-protocol");
    int verdict = hd   ? check_bearer(host, hd->value ? hd->value : "", hd->value_len)
                  : ws ? check_ws_protocol(host, ws->value ? ws->value : "", ws->value_len)
                       : check_bearer(host, NULL, 0);
    if (verdict == AUTH_OK) return 1;
    *status = 403;
    *message = auth_refusal_message(verdict);
    return 0;
}

/* route.defaults.authorize(req) -> true | false, 403, message */
static int l_authorize(lua_State *L) {
    lua_api_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    if (noauth(host)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_getfield(L, 1, "headers");
    lua_getfield(L, -1, "authorization");
    size_t len = 0;
    const char *header = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            return luaL_error(L, "req.headers.authorization is a %s, not a string",
                              luaL_typename(L, -1));
        header = lua_tolstring(L, -1, &len);
    }
    int verdict = check_bearer(host, header, len);
    if (!header) {
        lua_getfield(L, -2, "sec-websocket-protocol");
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *v = lua_tolstring(L, -1, &len);
            verdict = check_ws_protocol(host, v, len);
        }
    }
    if (verdict == AUTH_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushinteger(L, 403);
    lua_pushstring(L, auth_refusal_message(verdict));
    return 3;
}

/* ---- pick_upstream: the policies ---- */

enum { P_MAIN, P_RANDOM, P_RANDOM_AVAILABLE, P_ROUND_ROBIN, P_ROUND_ROBIN_AVAILABLE };

static const char *const policy_names[] = {"main", "random", "random_available", "round_robin",
                                           "round_robin_available"};

static int cmp_id(const default_upstream_t *a, const default_upstream_t *b) {
    return (a->id > b->id) - (a->id < b->id);
}

/* Fewest failures first, then most successes; id keeps the order stable between requests. */
static int by_health(const void *pa, const void *pb) {
    const default_upstream_t *a = pa, *b = pb;
    if (a->failed_count != b->failed_count) return a->failed_count < b->failed_count ? -1 : 1;
    if (a->success_count != b->success_count) return a->success_count > b->success_count ? -1 : 1;
    return cmp_id(a, b);
}

/* Oldest last success first, never-used ones before all others (the Go ordering), then id. */
static int by_last_success(const void *pa, const void *pb) {
    const default_upstream_t *a = pa, *b = pb;
    if (a->has_last_success != b->has_last_success) return a->has_last_success ? 1 : -1;
    if (a->has_last_success && a->last_success != b->last_success)
        return a->last_success < b->last_success ? -1 : 1;
    return cmp_id(a, b);
}

/* Keeps the upstreams without failures, in their order; returns how many. */
static size_t keep_available(default_upstream_t *v, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].failed_count == 0) v[k++] = v[i];
    return k;
}

/* Fisher-Yates from the end, as route.lua's shuffle did with math.random. */
static void shuffle(default_upstream_t *v, size_t n, uint64_t rng[4]) {
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_below(rng, i);
        default_upstream_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

/* The usual list is a handful: insertion sort without qsort's indirection; the order is total
 * (ids differ), so any sort gives the same answer. */
static void sort_upstreams(default_upstream_t *v, size_t n,
                           int (*cmp)(const void *, const void *)) {
    if (n > 16) {
        qsort(v, n, sizeof *v, cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        default_upstream_t t = v[i];
        size_t j = i;
        for (; j > 0 && cmp(&v[j - 1], &t) > 0; j--)
            v[j] = v[j - 1];
        v[j] = t;
    }
}

int default_policy_known(const char *policy) {
    const char *name = policy && *policy ? policy : "main";
    for (size_t i = 0; i < sizeof policy_names / sizeof policy_names[0]; i++)
        if (strcmp(name, policy_names[i]) == 0) return 1;
    return 0;
}

int default_policy_order(const char *policy, default_upstream_t *v, size_t n, uint64_t rng[4],
                         size_t *out_n, char *err, size_t err_cap) {
    const char *name = policy && *policy ? policy : "main";
    int p = -1;
    for (size_t i = 0; i < sizeof policy_names / sizeof policy_names[0]; i++)
        if (strcmp(name, policy_names[i]) == 0) p = (int)i;
    if (p < 0) {
        snprintf(err, err_cap, "unknown load balance policy '%s'", name);
        return -1;
    }
    if (n == 0) {
        snprintf(err, err_cap, "no upstream available: add one with -add or POST /admin/upstreams");
        return -1;
    }
    if (p == P_RANDOM_AVAILABLE || p == P_ROUND_ROBIN_AVAILABLE) n = keep_available(v, n);
    if (n == 0) {
        snprintf(err, err_cap, "no upstream available: every upstream has failures (policy '%s')",
                 name);
        return -1;
    }
    switch (p) {
    case P_MAIN:
        sort_upstreams(v, n, by_health);
        break;
    case P_RANDOM:
    case P_RANDOM_AVAILABLE:
        shuffle(v, n, rng);
        break;
    default:
        sort_upstreams(v, n, by_last_success);
        break;
    }
    *out_n = n;
    return 0;
}

/* As lua_api_upstreams.c gives it to Lua: 0 (nil there) when never. */
static int64_t last_success_of(const store_upstream_t *u) {
    return u->has_last_success && !util_time_is_never(u->last_call_success_time)
               ? u->last_call_success_time
               : 0;
}

static char *redacted(lua_api_host_t *host, route_req_t *req, const char *msg) {
    route_req_t *saved = host->req;
    host->req = req;
    char *out = lua_api_redact(host, msg, strlen(msg));
    host->req = saved;
    return out ? out : strdup("out of memory");
}

int default_pick_upstream(lua_api_host_t *host, route_req_t *req, route_candidate_t **out,
                          size_t *n_out, char **err) {
    store_t *s = host->ctx->store;
    const store_upstream_list_t *l = s ? store_loop_upstreams(s) : NULL;
    size_t n = l ? l->n : 0;
    default_upstream_t stack_v[STACK_UPSTREAMS];
    default_upstream_t *v = n <= STACK_UPSTREAMS ? stack_v : malloc(n * sizeof *v);
    if (!v) {
        *err = strdup("out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const store_upstream_t *u = &l->items[i];
        int64_t last = last_success_of(u);
        /* Seconds as a double, as the Lua tables carry it, so two times Lua could not tell
         * apart tie-break on id here too. */
        v[i] = (default_upstream_t){
            u->id, u->success_count, u->failed_count, (double)last / 1e9, last != 0, i};
    }
    char msg[256];
    size_t k = 0;
    int rc = default_policy_order(config_current(host->ctx)->policy, v, n, host->rng, &k, msg,
                                  sizeof msg);
    route_candidate_t *c = NULL;
    if (rc == 0) {
        /* Copies: the loop's upstream list may be replaced while the request fails over. */
        arena_t *a = http_request_arena(req->http);
        c = arena_alloc(a, k * sizeof *c);
        for (size_t i = 0; c && i < k; i++) {
            const store_upstream_t *u = &l->items[v[i].index];
            c[i].id = u->id;
            c[i].sk = arena_strdup(a, u->sk ? u->sk : "");
            c[i].endpoint = arena_strdup(a, u->endpoint ? u->endpoint : "");
            c[i].connect_timeout = c[i].timeout = c[i].stream_timeout = c[i].idle_timeout = -1;
            if (!c[i].sk || !c[i].endpoint) c = NULL;
        }
        if (!c) snprintf(msg, sizeof msg, "out of memory");
    }
    if (v != stack_v) free(v);
    if (!c) {
        *err = redacted(host, req, msg);
        return -1;
    }
    *out = c;
    *n_out = k;
    return 0;
}

static int64_t opt_int_field(lua_State *L, int t, const char *name) {
    lua_getfield(L, t, name);
    int isint = 0;
    int64_t v = (int64_t)lua_tointegerx(L, -1, &isint);
    if (!isint) v = (int64_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* route.defaults.pick_upstream(req, upstreams) -> {upstream, ...} | nil, message. The list
 * may be any the script made (a subset, its own tables): a missing count reads as 0, a missing
 * last_call_success_time as never. The answer is a new list of the same tables. */
static int l_pick_upstream(lua_State *L) {
    lua_api_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer len = luaL_len(L, 2);
    size_t n = len > 0 ? (size_t)len : 0;
    if (n > 100000) return luaL_error(L, "pick_upstream: too many upstreams");
    default_upstream_t stack_v[STACK_UPSTREAMS];
    default_upstream_t *v = n <= STACK_UPSTREAMS ? stack_v : lua_newuserdatauv(L, n * sizeof *v, 0);
    size_t got = 0;
    /* ipairs' walk: up to the first nil. */
    for (size_t i = 0; i < n; i++) {
        if (lua_geti(L, 2, (lua_Integer)i + 1) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        int t = lua_gettop(L);
        default_upstream_t *u = &v[got++];
        u->index = i;
        u->id = opt_int_field(L, t, "id");
        u->success_count = opt_int_field(L, t, "success_count");
        u->failed_count = opt_int_field(L, t, "failed_count");
        lua_getfield(L, t, "last_call_success_time");
        u->has_last_success = lua_type(L, -1) == LUA_TNUMBER;
        u->last_success = u->has_last_success ? (double)lua_tonumber(L, -1) : 0;
        lua_settop(L, t - 1);
    }
    char msg[256];
    size_t k = 0;
    if (default_policy_order(config_current(host->ctx)->policy, v, got, host->rng, &k, msg,
                             sizeof msg) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    lua_createtable(L, (int)k, 0);
    for (size_t i = 0; i < k; i++) {
        lua_geti(L, 2, (lua_Integer)v[i].index + 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* ---- on_response: the error notices ---- */

static const char *nonempty_env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static void post_json(lua_api_host_t *host, const char *url, const buf_t *body) {
    if (!host->ctx->pool || !body->data) return;
    const char *why = NULL;
    /* Fire and forget, as route.http_post: the outcome is the pool's to log. */
    (void)upstream_post(host->ctx->pool, url, body->data, body->len,
                        "content-type: application/json\r\n", 10000, &why);
}

/* The text names the endpoint, status and error, never a key: the C side builds res.error
 * from endpoints only. */
static void notify(lua_api_host_t *host, const char *id, const char *path, const char *endpoint,
                   long long status, const char *error, size_t error_len) {
    const char *feishu = nonempty_env("FEISHU_WEBHOOK"), *matrix = nonempty_env("MATRIX_API");
    if (!feishu && !matrix) return;
    buf_t text = {0}, body = {0};
    if (buf_printf(&text, "openai-api-route: request %s %s to %s failed, status %lld: ", id,
                   path ? path : "", endpoint ? endpoint : "(no upstream)", status) ||
        buf_append(&text, error, error_len)) {
        route_log(LOG_ERROR, "hooks: out of memory, error notice of request %s not sent", id);
        buf_free(&text);
        return;
    }
    if (feishu) {
        int bad = buf_appends(&body, "{\"msg_type\":\"text\",\"content\":{\"text\":") ||
                  buf_append_json_string(&body, text.data, text.len) || buf_appends(&body, "}}");
        if (!bad) post_json(host, feishu, &body);
        body.len = 0;
    }
    if (matrix) {
        int bad = buf_appends(&body, "{\"msgtype\":\"m.text\",\"body\":") ||
                  buf_append_json_string(&body, text.data, text.len) || buf_appends(&body, "}");
        if (!bad) post_json(host, matrix, &body);
    }
    buf_free(&body);
    buf_free(&text);
}

void default_on_response(lua_api_host_t *host, route_req_t *req, const route_res_t *res) {
    if (!res->error || res->client_aborted) return;
    notify(host, req->id, http_request_path(req->http), res->upstream_endpoint, res->status,
           res->error, strlen(res->error));
}

/* route.defaults.on_response(req, res): reads req and res as a script would (they may be
 * its own tables). */
static int l_on_response(lua_State *L) {
    lua_api_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    lua_settop(L, 2);
    lua_getfield(L, 2, "error");          /* 3 */
    lua_getfield(L, 2, "client_aborted"); /* 4 */
    if (!lua_toboolean(L, 3) || lua_toboolean(L, 4)) return 0;
    if (!nonempty_env("FEISHU_WEBHOOK") && !nonempty_env("MATRIX_API")) return 0;
    lua_getfield(L, 1, "id");   /* 5 */
    lua_getfield(L, 1, "path"); /* 6 */
    const char *endpoint = NULL;
    if (lua_getfield(L, 2, "upstream") != LUA_TNIL) { /* 7 */
        lua_getfield(L, 7, "endpoint");
        if (lua_toboolean(L, -1)) endpoint = luaL_tolstring(L, -1, NULL);
    }
    lua_getfield(L, 2, "status");
    long long status = 0;
    if (lua_toboolean(L, -1)) {
        int isint = 0;
        status = (long long)lua_tointegerx(L, -1, &isint);
        if (!isint) return luaL_error(L, "res.status is not an integer");
    }
    const char *id = luaL_tolstring(L, 5, NULL);
    const char *path = lua_toboolean(L, 6) ? luaL_tolstring(L, 6, NULL) : "";
    size_t error_len = 0;
    const char *error = luaL_tolstring(L, 3, &error_len);
    notify(host, id, path, endpoint, status, error, error_len);
    return 0;
}

/* ---- registration ---- */

void lua_api_open_defaults(lua_State *L, lua_api_host_t *host) {
    static const luaL_Reg funcs[] = {
        {"authorize", l_authorize},
        {"pick_upstream", l_pick_upstream},
        {"on_response", l_on_response},
        {NULL, NULL},
    };
    rng_seed(host->rng);
    lua_createtable(L, 0, 3);
    lua_pushlightuserdata(L, host);
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_C_DEFAULTS);
}

void lua_api_push_c_defaults(lua_State *L) {
    lua_createtable(L, 0, 3);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_C_DEFAULTS);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -5);
    }
    lua_pop(L, 1);
}
