/* test_hooks.c: the Lua hooks against a real temporary store: the default authorize and every
 * policy's ordering (the C defaults against the Lua they replaced, tests/unit/lua_reference),
 * that a hook whose value is a C default runs without Lua and an override keeps the others in
 * C, errors from scripts (load, raise, runaway loops, memory hogs), partial
 * overrides, reload keeping route.shared, on_response records and counters, and that a req
 * kept by a script cannot reach a finished request. It must not depend on the network. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route/cli.h"
#include "route/config.h"
#include "route/ctx.h"
#include "route/hooks.h"
#include "route/http.h"
/* The fixture builds a request without a connection: it needs the HTTP core's struct. */
#include "../../src/http_internal.h"
#include "route/lua_api.h"
#include "route/records.h"
#include "route/store.h"
#include "route/util.h"

#include "testlib.h"

/* ---- fixtures ---- */

static char tmpdir[256];
static char dbpath[300];
static route_options_t opts;
static route_ctx_t ctx;

/* No loop runs here: what another connection wrote reaches the loop's view through a snapshot
 * read on demand (the server's poller does the same every 100 ms). */
static void cache_reload(store_t *s) {
    store_loop_apply(s, store_snapshot_read(s));
}

static void reopen_store(void) {
    /* Closing flushes the writer thread's queue, so records and counters become readable. */
    if (ctx.store) store_close(ctx.store);
    char *err = NULL;
    ctx.store = store_open(dbpath, &err);
    if (!ctx.store) {
        fprintf(stderr, "store_open: %s\n", err ? err : "?");
        exit(1);
    }
    cache_reload(ctx.store);
}

static void set_config(const char *key, const char *value) {
    CHECK(store_config_set(ctx.store, key, value) == STORE_OK);
    cache_reload(ctx.store);
}

static void sql(const char *q) {
    sqlite3 *db;
    CHECK(sqlite3_open(dbpath, &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "sql: %s: %s\n", q, err);
        CHECK(0);
    }
    sqlite3_free(err);
    sqlite3_close(db);
    cache_reload(ctx.store);
}

/* A scripts folder holding one route.lua. */
static const char *script_dir(const char *name, const char *text) {
    static char dir[400];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    mkdir(dir, 0700);
    char path[450];
    snprintf(path, sizeof path, "%s/route.lua", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
    return dir;
}

typedef struct fake {
    http_request_t http;
    route_req_t req;
    route_header_t headers[4];
} fake_t;

static fake_t *fake_new(const char *auth, const char *body, const char *model) {
    fake_t *f = calloc(1, sizeof *f);
    arena_init(&f->http.arena);
    f->http.ctx = &ctx;
    f->http.method_name = "POST";
    f->http.path = "/v1/chat/completions";
    snprintf(f->http.client_ip, sizeof f->http.client_ip, "127.0.0.1");
    size_t n = 0;
    f->headers[n++] = (route_header_t){"user-agent", 10, "test-agent/1", 12};
    if (auth) f->headers[n++] = (route_header_t){"authorization", 13, (char *)auth, strlen(auth)};
    f->http.headers = f->headers;
    f->http.n_headers = n;
    if (body) buf_appends(&f->http.body, body);
    f->req.http = &f->http;
    util_uuid4(f->req.id);
    f->req.model = model ? arena_strdup(&f->http.arena, model) : NULL;
    return f;
}

static void fake_free(fake_t *f) {
    buf_free(&f->http.body);
    arena_free(&f->http.arena);
    free(f);
}

static hooks_t *load(const char *dir) {
    char *err = NULL;
    hooks_t *h = hooks_new(&ctx, dir, &err);
    if (!h) fprintf(stderr, "hooks_new: %s\n", err);
    CHECK(h != NULL);
    free(err);
    return h;
}

static int auth(hooks_t *h, const char *header, int *status, char *msg, size_t cap) {
    fake_t *f = fake_new(header, "{}", NULL);
    const char *m = NULL;
    *status = 0;
    int rc = hooks_authorize(h, &f->req, status, &m);
    snprintf(msg, cap, "%s", m ? m : "");
    hooks_release(h, &f->req);
    fake_free(f);
    return rc;
}

/* The picked ids as "3,2,4,1", or "ERR:<message>". */
static void pick(hooks_t *h, const char *model, char *out, size_t cap) {
    fake_t *f = fake_new("Bearer x", "{}", model);
    route_candidate_t *c = NULL;
    size_t n = 0;
    const char *m = NULL;
    if (hooks_pick_upstream(h, &f->req, &c, &n, &m) != 0) {
        snprintf(out, cap, "ERR:%s", m ? m : "");
    } else {
        out[0] = '\0';
        for (size_t i = 0; i < n; i++) {
            size_t len = strlen(out);
            snprintf(out + len, cap - len, "%s%lld", i ? "," : "", (long long)c[i].id);
        }
    }
    hooks_release(h, &f->req);
    fake_free(f);
}

/* What proxy_finish does for an exchange that passed authorize: C counts and builds the row,
 * on_response observes (may add to it or veto it), the row is written, the request ends. */
static void finish(hooks_t *h, fake_t *f, const route_res_t *res) {
    records_count(ctx.store, res);
    store_record_t *rec = records_build(&f->req, res, 1);
    CHECK(rec != NULL);
    hooks_on_response(h, &f->req, res, &rec);
    if (rec) store_loop_record(ctx.store, rec);
    hooks_release(h, &f->req);
}

/* ---- tests ---- */

static void test_authorize(void) {
    hooks_t *h = load(NULL);
    int st;
    char msg[256];
    set_config("authorization", "tok-one, tok-two,,");

    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 0);
    CHECK(st == 403);
    CHECK(strcmp(msg, "authorization header should start with 'Bearer'") == 0);
    CHECK(auth(h, "Basic tok-one", &st, msg, sizeof msg) == 0);
    CHECK(strcmp(msg, "authorization header should start with 'Bearer'") == 0);
    CHECK(auth(h, "bearer tok-one", &st, msg, sizeof msg) == 0);
    CHECK(auth(h, "Bearer wrong", &st, msg, sizeof msg) == 0);
    CHECK(st == 403);
    CHECK(strcmp(msg, "wrong authorization header") == 0);
    CHECK(auth(h, "Bearer", &st, msg, sizeof msg) == 0);
    CHECK(strcmp(msg, "wrong authorization header") == 0);
    CHECK(auth(h, "Bearer tok-one", &st, msg, sizeof msg) == 1);
    CHECK(auth(h, "Bearer tok-two", &st, msg, sizeof msg) == 1);
    CHECK(auth(h, "Bearer   tok-two  ", &st, msg, sizeof msg) == 1);
    CHECK(auth(h, "Bearertok-one", &st, msg, sizeof msg) == 1); /* Go's prefix rule */
    CHECK(auth(h, "Bearer tok-on", &st, msg, sizeof msg) == 0);

    opts.noauth = 1;
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 1);
    opts.noauth = 0;
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 0);
    hooks_free(h);
}

static void test_policies(void) {
    hooks_t *h = load(NULL);
    char out[256];

    sql("DELETE FROM openai_upstreams");
    set_config("policy", "main");
    pick(h, NULL, out, sizeof out);
    CHECK(strncmp(out, "ERR:no upstream available", 25) == 0);

    int64_t id;
    CHECK(store_add_upstream(ctx.store, "sk-aaaa1111", "http://a.example/v1", &id) == STORE_OK);
    CHECK(store_add_upstream(ctx.store, "sk-bbbb2222", "http://b.example/v1", &id) == STORE_OK);
    CHECK(store_add_upstream(ctx.store, "sk-cccc3333", "http://c.example/v1", &id) == STORE_OK);
    CHECK(store_add_upstream(ctx.store, "sk-dddd4444", "http://d.example/v1", &id) == STORE_OK);
    char q[1024], t1[64], t2[64], t3[64];
    int64_t now = util_now_wall_ns();
    util_format_db_time(t1, sizeof t1, now - 100 * 1000000000LL);
    util_format_db_time(t2, sizeof t2, now - 50 * 1000000000LL);
    util_format_db_time(t3, sizeof t3, now - 10 * 1000000000LL);
    /* id: success, failed, last success
     *  1:  5, 1, now-10   2: 2, 0, never (Go zero time)   3: 9, 0, now-50   4: 0, 0, now-100 */
    snprintf(q, sizeof q,
             "UPDATE openai_upstreams SET success_count=5, failed_count=1, "
             "last_call_success_time='%s' WHERE id=1;"
             "UPDATE openai_upstreams SET success_count=2, failed_count=0, "
             "last_call_success_time='0001-01-01 00:00:00+00:00' WHERE id=2;"
             "UPDATE openai_upstreams SET success_count=9, failed_count=0, "
             "last_call_success_time='%s' WHERE id=3;"
             "UPDATE openai_upstreams SET success_count=0, failed_count=0, "
             "last_call_success_time='%s' WHERE id=4;",
             t3, t2, t1);
    sql(q);
    cache_reload(ctx.store);
    CHECK(store_loop_upstreams(ctx.store)->n == 4);

    set_config("policy", "main");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "3,2,4,1") == 0);
    set_config("policy", "");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "3,2,4,1") == 0);
    set_config("policy", "round_robin");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "2,4,3,1") == 0);
    set_config("policy", "round_robin_available");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "2,4,3") == 0);

    set_config("policy", "random");
    int seen_other = 0, all_perm = 1;
    char first[256] = "";
    for (int i = 0; i < 60; i++) {
        pick(h, NULL, out, sizeof out);
        if (strlen(out) != 7 || !strchr(out, '1') || !strchr(out, '2') || !strchr(out, '3') ||
            !strchr(out, '4'))
            all_perm = 0;
        if (!first[0])
            snprintf(first, sizeof first, "%s", out);
        else if (strcmp(first, out) != 0)
            seen_other = 1;
    }
    CHECK(all_perm);
    CHECK(seen_other);

    set_config("policy", "random_available");
    int ok = 1;
    for (int i = 0; i < 30; i++) {
        pick(h, NULL, out, sizeof out);
        if (strlen(out) != 5 || strchr(out, '1')) ok = 0;
    }
    CHECK(ok);

    set_config("policy", "fastest");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:unknown load balance policy 'fastest'") == 0);

    /* Nothing available: every upstream has a failure. */
    sql("UPDATE openai_upstreams SET failed_count=1");
    set_config("policy", "random_available");
    pick(h, NULL, out, sizeof out);
    CHECK(strncmp(out, "ERR:no upstream available", 25) == 0);
    sql("UPDATE openai_upstreams SET failed_count=0 WHERE id<>1");

    /* Candidates carry the key and endpoint; timeouts default to "use the config". */
    set_config("policy", "main");
    fake_t *f = fake_new(NULL, "{}", NULL);
    route_candidate_t *c;
    size_t n;
    const char *m;
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0);
    CHECK(n == 4);
    if (n == 4) {
        CHECK(c[0].id == 3 && strcmp(c[0].sk, "sk-cccc3333") == 0);
        CHECK(strcmp(c[0].endpoint, "http://c.example/v1") == 0);
        CHECK(c[0].timeout < 0 && c[0].connect_timeout < 0 && c[0].idle_timeout < 0 &&
              c[0].stream_timeout < 0);
    }
    fake_free(f);
    hooks_free(h);
}

static void test_override_pick_only(void) {
    const char *dir = script_dir("pick_only", "local route = require 'route'\n"
                                              "return { pick_upstream = function(req, ups)\n"
                                              "  if req.model == 'many' then\n"
                                              "    return { ups[2], ups[1] }\n"
                                              "  elseif req.model == 'bad' then\n"
                                              "    return { { endpoint = 'http://x' } }\n"
                                              "  elseif req.model == 'none' then\n"
                                              "    return nil, 'nothing for ' .. req.model\n"
                                              "  end\n"
                                              "  return { id = 42, sk = 'k', endpoint = 'http://x',"
                                              " timeout = 5, idle_timeout = 1.5 }\n"
                                              "end }\n");
    hooks_t *h = load(dir);
    int st;
    char msg[256], out[256];
    /* authorize is still the default. */
    CHECK(auth(h, "Bearer wrong", &st, msg, sizeof msg) == 0);
    CHECK(strcmp(msg, "wrong authorization header") == 0);
    CHECK(auth(h, "Bearer tok-one", &st, msg, sizeof msg) == 1);

    fake_t *f = fake_new(NULL, "{}", NULL);
    route_candidate_t *c;
    size_t n;
    const char *m;
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0);
    CHECK(n == 1);
    if (n == 1) {
        CHECK(c[0].id == 42 && strcmp(c[0].endpoint, "http://x") == 0);
        CHECK(c[0].timeout == 5 && c[0].idle_timeout == 1.5 && c[0].connect_timeout < 0);
    }
    fake_free(f);
    pick(h, "many", out, sizeof out);
    CHECK(strcmp(out, "2,1") == 0);
    pick(h, "bad", out, sizeof out);
    CHECK(strcmp(out, "ERR:pick_upstream returned an invalid upstream") == 0);
    pick(h, "none", out, sizeof out);
    CHECK(strcmp(out, "ERR:nothing for none") == 0);
    hooks_free(h);
}

/* The upstream tables are cached per upstreams generation, their counters kept current; a field
 * a hook adds to one lasts for that call only. */
static void test_upstream_cache(void) {
    const char *dir =
        script_dir("upcache", "local route = require 'route'\n"
                              "return { pick_upstream = function(req, ups)\n"
                              "  local u = ups[1]\n"
                              "  if req.model == 'timeout' then\n"
                              "    u.timeout = 7\n"
                              "    if u.timeout ~= 7 then error('overlay not read back') end\n"
                              "  elseif req.model == 'same' then\n"
                              "    local same = rawequal(route.shared.first, u)\n"
                              "    route.shared.first = u\n"
                              "    return nil, tostring(same) .. ' ' .. u.success_count .. ' ' ..\n"
                              "      tostring(u.timeout)\n"
                              "  end\n"
                              "  return u\n"
                              "end }\n");
    hooks_t *h = load(dir);
    char out[256];
    pick(h, "same", out, sizeof out); /* remembers the table */
    fake_t *f = fake_new(NULL, "{}", "timeout");
    route_candidate_t *c;
    size_t n;
    const char *m;
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0);
    CHECK(n == 1 && c[0].timeout == 7 && c[0].connect_timeout < 0);
    hooks_release(h, &f->req);
    fake_free(f);
    f = fake_new(NULL, "{}", NULL);
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0);
    CHECK(n == 1 && c[0].timeout < 0); /* the field did not outlive its call */
    hooks_release(h, &f->req);
    fake_free(f);

    int64_t s0 = store_loop_upstreams(ctx.store)->items[0].success_count;
    pick(h, "same", out, sizeof out);
    char want[64];
    snprintf(want, sizeof want, "ERR:true %lld nil", (long long)s0);
    CHECK(strcmp(out, want) == 0);
    /* A counter bump reaches the cached table; it stays the same table. */
    store_loop_upstream_result(ctx.store, store_loop_upstreams(ctx.store)->items[0].id, 1);
    pick(h, "same", out, sizeof out);
    snprintf(want, sizeof want, "ERR:true %lld nil", (long long)s0 + 1);
    CHECK(strcmp(out, want) == 0);
    /* A new upstream set builds new tables. */
    int64_t id;
    CHECK(store_add_upstream(ctx.store, "sk-eeee5555", "http://e.example/v1", &id) == STORE_OK);
    cache_reload(ctx.store);
    pick(h, "same", out, sizeof out);
    CHECK(strncmp(out, "ERR:false ", 10) == 0);
    CHECK(store_delete_upstream(ctx.store, id) == STORE_OK);
    cache_reload(ctx.store);
    hooks_free(h);
}

static void test_errors(void) {
    char *err = NULL;
    const char *dir = script_dir("syntax", "return {\n  authorize = function(req)\n    retur x\n"
                                           "  end }\n");
    CHECK(hooks_new(&ctx, dir, &err) == NULL);
    CHECK(err && strstr(err, "syntax/route.lua:3:"));
    free(err);
    err = NULL;
    dir = script_dir("rterr", "local x = nil\nreturn x.y\n");
    CHECK(hooks_new(&ctx, dir, &err) == NULL);
    CHECK(err && strstr(err, "rterr/route.lua:2:") && strstr(err, "index"));
    free(err);
    err = NULL;
    dir = script_dir("notable", "return 42\n");
    CHECK(hooks_new(&ctx, dir, &err) == NULL);
    CHECK(err && strstr(err, "must return a table"));
    free(err);
    err = NULL;
    dir = script_dir("badhook", "return { authorize = 'yes' }\n");
    CHECK(hooks_new(&ctx, dir, &err) == NULL);
    CHECK(err && strstr(err, "'authorize' must be a function"));
    free(err);

    /* A folder without route.lua: the embedded defaults. */
    char empty[400];
    snprintf(empty, sizeof empty, "%s/empty", tmpdir);
    mkdir(empty, 0700);
    hooks_t *h = load(empty);
    hooks_free(h);

    dir = script_dir("raises", "return {\n"
                               "  authorize = function(req) error('boom') end,\n"
                               "  pick_upstream = function(req, ups)\n"
                               "    if req.model == 'loop' then while true do end end\n"
                               "    if req.model == 'co' then\n"
                               "      local co = coroutine.wrap(function() while true do end end)\n"
                               "      co()\n"
                               "    end\n"
                               "    if req.model == 'hog' then\n"
                               "      local t = {}\n"
                               "      for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end\n"
                               "    end\n"
                               "    if req.model == 'table' then error({}) end\n"
                               "    if req.model == 'slow' then\n"
                               "      local s\n"
                               "      for i = 1, 1e9 do s = string.rep('x', 200000) end\n"
                               "    end\n"
                               "    return { id = 7, sk = 's', endpoint = 'e' }\n"
                               "  end }\n");
    h = load(dir);
    int st;
    char msg[256], out[256];
    /* The instruction budget first: no time limit to beat it on a slow machine. */
    set_config("hook_time_limit_ms", "600000");
    CHECK(auth(h, "Bearer tok-one", &st, msg, sizeof msg) == -1);
    CHECK(st == 500);
    /* Request-time errors name the script, not the server's directories. */
    CHECK(strcmp(msg, "route.lua:2: boom") == 0);

    pick(h, "loop", out, sizeof out);
    CHECK(strstr(out, "ERR:") == out && strstr(out, "instruction budget"));
    CHECK(strstr(out, "ERR:route.lua:4:") == out);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "7") == 0); /* the state still serves */
    pick(h, "co", out, sizeof out);
    CHECK(strstr(out, "instruction budget") != NULL);

    set_config("hook_instruction_budget", "50000");
    int64_t t0 = util_now_mono_ns();
    pick(h, "loop", out, sizeof out);
    CHECK(strstr(out, "instruction budget (50000 instructions)") != NULL);
    CHECK(util_now_mono_ns() - t0 < 1000000000LL);
    set_config("hook_instruction_budget", "");

    set_config("hook_memory_limit_mb", "32");
    pick(h, "hog", out, sizeof out);
    CHECK(strstr(out, "ERR:not enough memory") == out);
    set_config("hook_memory_limit_mb", "");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "7") == 0);

    pick(h, "table", out, sizeof out);
    CHECK(strcmp(out, "ERR:(error object is a table value)") == 0);

    /* Few instructions, much time: the time limit stops it, and the state still serves. */
    set_config("hook_time_limit_ms", "30");
    t0 = util_now_mono_ns();
    pick(h, "slow", out, sizeof out);
    CHECK(strstr(out, "ERR:route.lua:") == out && strstr(out, "time limit (30 ms)"));
    CHECK(util_now_mono_ns() - t0 < 1000000000LL);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "7") == 0);
    set_config("hook_time_limit_ms", "");
    hooks_free(h);
}

static void test_reload_and_shared(void) {
    const char *dir = script_dir("reload", "local route = require 'route'\n"
                                           "route.shared.n = route.shared.n or 0\n"
                                           "return { pick_upstream = function(req, ups)\n"
                                           "  route.shared.n = route.shared.n + 1\n"
                                           "  return nil, 'v1 n=' .. route.shared.n\n"
                                           "end }\n");
    hooks_t *h = load(dir);
    char out[256];
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:v1 n=1") == 0);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:v1 n=2") == 0);

    script_dir("reload", "return { pick_upstream = function( }\n");
    char *err = NULL;
    CHECK(hooks_reload(h, &err) == -1);
    CHECK(err && strstr(err, "reload/route.lua:1:"));
    free(err);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:v1 n=3") == 0); /* the old hooks stay */

    script_dir("reload", "local route = require 'route'\n"
                         "return { pick_upstream = function(req, ups)\n"
                         "  route.shared.n = route.shared.n + 1\n"
                         "  return nil, 'v2 n=' .. route.shared.n\n"
                         "end }\n");
    err = NULL;
    CHECK(hooks_reload(h, &err) == 0);
    CHECK(err == NULL);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:v2 n=4") == 0);

    /* A helper module the script requires from its folder is reloaded with it. */
    char helper[500];
    snprintf(helper, sizeof helper, "%s/reload/helper.lua", tmpdir);
    FILE *hf = fopen(helper, "w");
    fputs("return { name = 'helper v1' }\n", hf);
    fclose(hf);
    script_dir("reload", "local helper = require 'helper'\n"
                         "return { pick_upstream = function() return nil, helper.name end }\n");
    CHECK(hooks_reload(h, NULL) == 0);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:helper v1") == 0);
    hf = fopen(helper, "w");
    fputs("return { name = 'helper v2' }\n", hf);
    fclose(hf);
    CHECK(hooks_reload(h, NULL) == 0);
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:helper v2") == 0);

    /* Removing the override falls back to the default pick_upstream. */
    script_dir("reload", "return {}\n");
    CHECK(hooks_reload(h, NULL) == 0);
    set_config("policy", "main");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "3,2,4,1") == 0);
    hooks_free(h);
}

static void test_req_table(void) {
    const char *dir = script_dir(
        "req", "local route = require 'route'\n"
               "local cjson = require 'cjson'\n"
               "return {\n"
               "  authorize = function(req)\n"
               "    if req.model == 'keep' then\n"
               "      route.shared.kept = req\n"
               "      return false, 401, req.body .. '|' .. req.headers['user-agent']\n"
               "    end\n"
               "    if req.model == 'later' then\n"
               "      local k = route.shared.kept\n"
               "      return false, 418, tostring(k.body) .. '|' .. k.id:len() .. '|' ..\n"
               "        tostring(k.query) .. '|' .. tostring(k.stream) .. '|' .. k.method\n"
               "    end\n"
               "    if req.model == 'keep2' then\n"
               "      route.shared.kept2 = req\n"
               "      return false, 401, 'kept'\n"
               "    end\n"
               "    if req.model == 'later2' then\n"
               "      return false, 401, tostring(route.shared.kept2.body)\n"
               "    end\n"
               "    if req.model == 'json' then\n"
               "      return false, 400, cjson.encode({ a = 1 })\n"
               "    end\n"
               "    if req.model == 'noauth' then\n"
               "      return false, 400, tostring(route.config.get('noauth'))\n"
               "    end\n"
               "    return 'yes'\n"
               "  end }\n");
    hooks_t *h = load(dir);
    fake_t *f = fake_new(NULL, "{\"model\":\"keep\"}", "keep");
    int st = 0;
    const char *m = NULL;
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    CHECK(st == 401);
    CHECK(m && strcmp(m, "{\"model\":\"keep\"}|test-agent/1") == 0);

    /* The kept req outlived its request: reading it raises, even a field it had cached.
     * Under AddressSanitizer this would also catch a read of the freed request. */
    char kept_id[37];
    memcpy(kept_id, f->req.id, sizeof kept_id);
    hooks_release(h, &f->req);
    fake_free(f);
    f = fake_new(NULL, "{\"model\":\"later\"}", "later");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == -1);
    CHECK(st == 500 && m && strstr(m, "has ended") && strstr(m, kept_id));
    hooks_release(h, &f->req);
    fake_free(f);

    /* A kept req that never read its body during the call raises too. */
    f = fake_new(NULL, "{\"model\":\"keep2\"}", "keep2");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    hooks_release(h, &f->req);
    fake_free(f);
    f = fake_new(NULL, "{}", "later2");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == -1);
    CHECK(m && strstr(m, "has ended"));
    hooks_release(h, &f->req);
    fake_free(f);

    f = fake_new(NULL, "{}", "json");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    CHECK(m && strcmp(m, "{\"a\":1}") == 0);
    hooks_release(h, &f->req);
    fake_free(f);

    opts.noauth = 1;
    f = fake_new(NULL, "{}", "noauth");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    CHECK(m && strcmp(m, "true") == 0);
    hooks_release(h, &f->req);
    fake_free(f);
    opts.noauth = 0;

    /* A truthy value that is not a boolean is a mistake, not a pass. */
    f = fake_new(NULL, "{}", "other");
    CHECK(hooks_authorize(h, &f->req, &st, &m) == -1);
    CHECK(st == 500 && m && strstr(m, "authorize returned a string"));
    hooks_release(h, &f->req);
    fake_free(f);
    hooks_free(h);
}

static store_record_t *find_record(const char *id, store_record_t **recs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i]->id, id) == 0) return recs[i];
    return NULL;
}

static void upstream_counts(int64_t id, int64_t *success, int64_t *failed, int *has_last) {
    store_upstream_list_t l = {0};
    CHECK(store_list_upstreams(ctx.store, &l) == STORE_OK);
    *success = *failed = -1;
    for (size_t i = 0; i < l.n; i++)
        if (l.items[i].id == id) {
            *success = l.items[i].success_count;
            *failed = l.items[i].failed_count;
            *has_last = l.items[i].has_last_success &&
                        !util_time_is_never(l.items[i].last_call_success_time);
        }
    store_upstream_list_free(&l);
}

static void test_on_response(void) {
    sql("UPDATE openai_upstreams SET success_count=0, failed_count=0, "
        "last_call_success_time=NULL");
    hooks_t *h = load(NULL);

    /* A failover: upstream 1 answered 503, upstream 2 served. */
    fake_t *f = fake_new("Bearer tok-one", "{\"model\":\"gpt-x\"}", "gpt-x");
    char id1[37];
    memcpy(id1, f->req.id, sizeof id1);
    route_attempt_t at[2] = {
        {1, "http://a.example/v1", 503, "status 503", 1, 0, 0},
        {2, "http://b.example/v1", 200, NULL, 0, 0, 0},
    };
    route_res_t res = {
        .status = 200,
        .upstream_id = 2,
        .upstream_endpoint = "http://b.example/v1",
        .model = "gpt-x-0613",
        .content = "hello",
        .content_len = 5,
        .has_usage = 1,
        .prompt_tokens = 3,
        .completion_tokens = 4,
        .total_tokens = 7,
        .elapsed_ns = 123456789,
        .ttfb_ns = 2345,
        .attempts = at,
        .n_attempts = 2,
    };
    finish(h, f, &res);
    fake_free(f);

    /* No model anywhere: the path names it. A 502 records its error and counts nothing as a
     * success. */
    f = fake_new("Bearer tok-one", "", NULL);
    char id2[37];
    memcpy(id2, f->req.id, sizeof id2);
    route_attempt_t at2[1] = {{3, "http://c.example/v1", 0, "connect refused", 1, 0, 0}};
    route_res_t res2 = {.status = 502,
                        .error = "all upstreams failed: http://c.example/v1: connect refused",
                        .elapsed_ns = 5,
                        .attempts = at2,
                        .n_attempts = 1};
    finish(h, f, &res2);
    fake_free(f);

    /* A client abort counts nothing. */
    f = fake_new("Bearer tok-one", "{}", NULL);
    route_attempt_t at3[1] = {{4, "http://d.example/v1", 200, NULL, 0, 0, 0}};
    route_res_t res3 = {.status = 200,
                        .upstream_id = 4,
                        .upstream_endpoint = "http://d.example/v1",
                        .client_aborted = 1,
                        .error = "client disconnected",
                        .attempts = at3,
                        .n_attempts = 1};
    finish(h, f, &res3);
    fake_free(f);
    hooks_free(h);

    /* Hooks that raise: one that added nothing (C's row says why), one that wrote the request's own
     * row with route.record{id = req.id} first (it replaces C's: one row). */
    const char *dir = script_dir("onresp", "local route = require 'route'\n"
                                           "return { on_response = function(req, res)\n"
                                           "  if req.model == 'after' then\n"
                                           "    route.record{ id = req.id, status = 299 }\n"
                                           "  end\n"
                                           "  error('on_response broke')\n"
                                           "end }\n");
    h = load(dir);
    f = fake_new("Bearer tok-one", "{\"model\":\"before\"}", "before");
    char id3[37];
    memcpy(id3, f->req.id, sizeof id3);
    route_attempt_t at4[1] = {{2, "http://b.example/v1", 200, NULL, 0, 0, 0}};
    route_res_t res4 = {.status = 200,
                        .upstream_id = 2,
                        .upstream_endpoint = "http://b.example/v1",
                        .attempts = at4,
                        .n_attempts = 1};
    finish(h, f, &res4);
    fake_free(f);
    f = fake_new("Bearer tok-one", "{}", "after");
    char id4[37];
    memcpy(id4, f->req.id, sizeof id4);
    finish(h, f, &res4);
    fake_free(f);
    hooks_free(h);

    reopen_store();
    store_record_t **recs = NULL;
    size_t n = 0;
    CHECK(store_list_records(ctx.store, 100, 0, &recs, &n) == STORE_OK);
    store_record_t *r = find_record(id1, recs, n);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->status == 200 && r->upstream_id == 2);
        CHECK(r->model && strcmp(r->model, "gpt-x") == 0);
        CHECK(r->upstream_endpoint && strcmp(r->upstream_endpoint, "http://b.example/v1") == 0);
        CHECK(r->response && strcmp(r->response, "hello") == 0);
        CHECK(r->body && strcmp(r->body, "{\"model\":\"gpt-x\"}") == 0);
        CHECK(r->ip && strcmp(r->ip, "127.0.0.1") == 0);
        CHECK(r->user_agent && strcmp(r->user_agent, "test-agent/1") == 0);
        CHECK(r->prompt_tokens == 3 && r->completion_tokens == 4 && r->total_tokens == 7);
        CHECK(r->elapsed_ns == 123456789 && r->response_time_ns == 2345);
        CHECK(r->error == NULL || r->error[0] == '\0');
    }
    r = find_record(id2, recs, n);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->status == 502);
        CHECK(r->model && strcmp(r->model, "/v1/chat/completions") == 0);
        CHECK(r->error && strstr(r->error, "connect refused"));
    }
    r = find_record(id3, recs, n);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->status == 200 && r->model && strcmp(r->model, "before") == 0);
        CHECK(r->error && strstr(r->error, "on_response hook:") && strstr(r->error, "broke"));
    }
    size_t rows4 = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i]->id, id4) == 0) {
            rows4++;
            CHECK(recs[i]->status == 299);
        }
    CHECK(rows4 == 1);
    for (size_t i = 0; i < n; i++)
        store_record_free(recs[i]);
    free(recs);

    int64_t s, fl;
    int last = 0;
    upstream_counts(1, &s, &fl, &last);
    CHECK(s == 0 && fl == 1);
    /* 2: C counts every exchange whatever on_response does: the failover's success and the
     * two exchanges whose hooks raised. */
    upstream_counts(2, &s, &fl, &last);
    CHECK(s == 3 && fl == 0 && last);
    upstream_counts(3, &s, &fl, &last);
    CHECK(s == 0 && fl == 1);
    upstream_counts(4, &s, &fl, &last);
    CHECK(s == 0 && fl == 0 && !last);
}

static void test_redact(void) {
    set_config("authorization", "tok-secret-1,tok-secret-2");
    lua_api_host_t host = {.ctx = &ctx};
    const char *msg = "key sk-aaaa1111 and tok-secret-2 and asis";
    char *out = lua_api_redact(&host, msg, strlen(msg));
    CHECK(out && strcmp(out, "key *** and *** and asis") == 0);
    free(out);
    fake_t *f = fake_new("Bearer client-own-token", "{}", NULL);
    host.req = &f->req;
    msg = "bad client-own-token";
    out = lua_api_redact(&host, msg, strlen(msg));
    CHECK(out && strcmp(out, "bad ***") == 0);
    free(out);
    fake_free(f);
}

/* The examples live in the source tree: found from this file's own path (CMake compiles it by
 * absolute path), or ROUTE_SOURCE_DIR when set. */
static void source_dir(char *out, size_t cap) {
    const char *env = getenv("ROUTE_SOURCE_DIR");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return;
    }
    snprintf(out, cap, "%s", __FILE__);
    char *cut = strstr(out, "/tests/unit/test_hooks.c");
    if (cut)
        *cut = '\0';
    else
        snprintf(out, cap, ".");
}

static void test_examples(void) {
    char dir[1024], src[900];
    source_dir(src, sizeof src);
    snprintf(dir, sizeof dir, "%s/scripts/examples/weighted_random", src);
    hooks_t *h = load(dir);
    char out[256];
    sql("UPDATE openai_upstreams SET failed_count=0");
    set_config("weights", "1=0,2=1000000,http://c.example/v1=0.000001");
    int first2 = 0, last1 = 0;
    for (int i = 0; i < 40; i++) {
        pick(h, NULL, out, sizeof out);
        first2 += out[0] == '2';
        last1 += strlen(out) == 7 && out[6] == '1';
    }
    CHECK(first2 >= 39);
    CHECK(last1 == 40);
    hooks_free(h);

    snprintf(dir, sizeof dir, "%s/scripts/examples/model_routing", src);
    h = load(dir);
    set_config("gpt4_endpoints", "c%.example, d%.example");
    set_config("policy", "round_robin");
    pick(h, "gpt-4o", out, sizeof out);
    CHECK(strcmp(out, "3,4") == 0 || strcmp(out, "4,3") == 0);
    pick(h, "gpt-3.5-turbo", out, sizeof out);
    CHECK(strcmp(out, "1,2") == 0 || strcmp(out, "2,1") == 0);
    set_config("gpt4_endpoints", "nomatch");
    pick(h, "gpt-4", out, sizeof out);
    CHECK(strstr(out, "ERR:no upstream serves model 'gpt-4'") == out);
    set_config("policy", "main");
    hooks_free(h);
}

/* ---- the default hooks in C ---- */

static void order_ids(const char *policy, default_upstream_t *v, size_t n, uint64_t rng[4],
                      char *out, size_t cap) {
    char err[200];
    size_t k = 0;
    if (default_policy_order(policy, v, n, rng, &k, err, sizeof err) != 0) {
        snprintf(out, cap, "ERR:%s", err);
        return;
    }
    out[0] = '\0';
    for (size_t i = 0; i < k; i++) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%lld", i ? "," : "", (long long)v[i].id);
    }
}

/* id, success, failed, last success (0: never); index set from the position. */
static void views(default_upstream_t *v, const int64_t rows[][4], size_t n) {
    for (size_t i = 0; i < n; i++)
        v[i] = (default_upstream_t){rows[i][0],         rows[i][1],      rows[i][2],
                                    (double)rows[i][3], rows[i][3] != 0, i};
}

/* The policies on their own: orderings, tie-breaks, filters and messages. */
static void test_c_policies(void) {
    static const int64_t rows[][4] = {
        /* id, success, failed, last success */
        {5, 9, 0, 0}, {1, 5, 1, 100}, {3, 9, 0, 50}, {2, 2, 0, 0}, {4, 0, 0, 50},
    };
    size_t n = sizeof rows / sizeof rows[0];
    default_upstream_t v[8];
    uint64_t rng[4] = {1, 2, 3, 4};
    char out[256];

    /* main: fewest failures, then most successes, then the lower id. */
    views(v, rows, n);
    order_ids("main", v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "3,5,2,4,1") == 0);
    views(v, rows, n);
    order_ids("", v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "3,5,2,4,1") == 0);
    views(v, rows, n);
    order_ids(NULL, v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "3,5,2,4,1") == 0);
    /* round_robin: never used first (by id), then the oldest last success, equal times by id. */
    views(v, rows, n);
    order_ids("round_robin", v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "2,5,3,4,1") == 0);
    views(v, rows, n);
    order_ids("round_robin_available", v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "2,5,3,4") == 0);
    /* The kept entries still say where they were in the caller's list. */
    CHECK(v[0].index == 3 && v[1].index == 0 && v[3].index == 4);

    /* random: every order of a permutation shows up, each first about as often. */
    int first[6] = {0}, perms_ok = 1, avail_ok = 1;
    for (int i = 0; i < 3000; i++) {
        views(v, rows, n);
        order_ids("random", v, n, rng, out, sizeof out);
        if (strlen(out) != 9) perms_ok = 0;
        for (const char *d = "12345"; *d; d++)
            if (!strchr(out, *d)) perms_ok = 0;
        first[out[0] - '0']++;
        views(v, rows, n);
        order_ids("random_available", v, n, rng, out, sizeof out);
        if (strlen(out) != 7 || strchr(out, '1')) avail_ok = 0;
    }
    CHECK(perms_ok);
    CHECK(avail_ok);
    for (int id = 1; id <= 5; id++)
        CHECK(first[id] > 450 && first[id] < 750); /* 600 expected */

    /* Short lists and long ones (sorted another way) follow the same order. */
    for (size_t len = 3; len <= 40; len += 37) {
        default_upstream_t big[40];
        uint64_t x = 99;
        for (size_t i = 0; i < len; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned r = (unsigned)(x >> 33);
            big[i] = (default_upstream_t){(int64_t)(len - i), r % 3,
                                          (r >> 2) % 2,       (double)((r >> 3) % 3),
                                          (r >> 5) % 3 != 0,  i};
        }
        size_t k = 0;
        char err[200];
        CHECK(default_policy_order("main", big, len, rng, &k, err, sizeof err) == 0 && k == len);
        int sorted = 1;
        for (size_t i = 1; i < k; i++) {
            const default_upstream_t *a = &big[i - 1], *b = &big[i];
            if (a->failed_count != b->failed_count     ? a->failed_count > b->failed_count
                : a->success_count != b->success_count ? a->success_count < b->success_count
                                                       : a->id > b->id)
                sorted = 0;
        }
        CHECK(sorted);
        CHECK(default_policy_order("round_robin", big, len, rng, &k, err, sizeof err) == 0);
        sorted = 1;
        for (size_t i = 1; i < k; i++) {
            const default_upstream_t *a = &big[i - 1], *b = &big[i];
            if (a->has_last_success != b->has_last_success ? a->has_last_success
                : a->has_last_success && a->last_success != b->last_success
                    ? a->last_success > b->last_success
                    : a->id > b->id)
                sorted = 0;
        }
        CHECK(sorted);
    }

    views(v, rows, n);
    order_ids("fastest", v, n, rng, out, sizeof out);
    CHECK(strcmp(out, "ERR:unknown load balance policy 'fastest'") == 0);
    order_ids("main", v, 0, rng, out, sizeof out);
    CHECK(strcmp(out, "ERR:no upstream available: add one with -add or POST /admin/upstreams") ==
          0);
    /* The policy is checked before the list. */
    order_ids("Main", v, 0, rng, out, sizeof out);
    CHECK(strcmp(out, "ERR:unknown load balance policy 'Main'") == 0);
    static const int64_t failing[][4] = {{1, 0, 1, 0}, {2, 3, 2, 10}};
    views(v, failing, 2);
    order_ids("random_available", v, 2, rng, out, sizeof out);
    CHECK(strcmp(out, "ERR:no upstream available: every upstream has failures "
                      "(policy 'random_available')") == 0);
    views(v, failing, 2);
    order_ids("round_robin_available", v, 2, rng, out, sizeof out);
    CHECK(strcmp(out, "ERR:no upstream available: every upstream has failures "
                      "(policy 'round_robin_available')") == 0);
    views(v, failing, 2);
    order_ids("main", v, 2, rng, out, sizeof out);
    CHECK(strcmp(out, "1,2") == 0);
}

/* The C defaults order the store's upstreams exactly as the Lua they replaced
 * (tests/unit/lua_reference/route.lua), natively and when a script calls
 * route.defaults.pick_upstream, over random counters with many ties. */
static void test_c_policies_match_lua(void) {
    char src[900], ref[1024];
    source_dir(src, sizeof src);
    snprintf(ref, sizeof ref, "%s/tests/unit/lua_reference", src);
    hooks_t *native = load(NULL);
    hooks_t *lua = load(ref);
    hooks_t *wrap = load(script_dir("wrap_pick", "local route = require 'route'\n"
                                                 "return { pick_upstream = function(req, ups)\n"
                                                 "  return route.defaults.pick_upstream(req, ups)\n"
                                                 "end }\n"));
    const store_upstream_list_t *l = store_loop_upstreams(ctx.store);
    CHECK(l->n >= 4);
    int64_t now = util_now_wall_ns();
    uint64_t seed = 12345;
    int same = 1, rounds = 0;
    static const char *const policies[] = {"main", "round_robin", "round_robin_available"};
    for (int round = 0; round < 40; round++) {
        char q[4096] = "";
        for (size_t i = 0; i < l->n; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned r = (unsigned)(seed >> 33);
            char t[64] = "NULL";
            if (r % 4) {
                char tt[48];
                util_format_db_time(tt, sizeof tt, now - (int64_t)(r % 4) * 1000000000LL);
                snprintf(t, sizeof t, "'%s'", tt);
            }
            size_t len = strlen(q);
            snprintf(q + len, sizeof q - len,
                     "UPDATE openai_upstreams SET success_count=%u, failed_count=%u, "
                     "last_call_success_time=%s WHERE id=%lld;",
                     (r >> 4) % 3, (r >> 8) % 2 ? 0 : (r >> 9) % 3, t, (long long)l->items[i].id);
        }
        sql(q);
        l = store_loop_upstreams(ctx.store);
        for (size_t p = 0; p < sizeof policies / sizeof policies[0]; p++) {
            set_config("policy", policies[p]);
            char a[256], b[256], c[256];
            pick(native, NULL, a, sizeof a);
            pick(lua, NULL, b, sizeof b);
            pick(wrap, NULL, c, sizeof c);
            if (strcmp(a, b) != 0 || strcmp(a, c) != 0) {
                fprintf(stderr, "policy %s: C %s, Lua %s, wrapped %s\n", policies[p], a, b, c);
                same = 0;
            }
            rounds++;
        }
    }
    CHECK(same);
    CHECK(rounds == 120);
    set_config("policy", "main");
    sql("UPDATE openai_upstreams SET failed_count=0");
    hooks_free(wrap);
    hooks_free(lua);
    hooks_free(native);
}

/* A hook whose value is one of route.defaults' C functions runs without Lua: no req object is
 * made for it. Overriding one hook leaves the others in C. */
static void test_c_defaults_called_natively(void) {
    set_config("authorization", "tok-one");
    set_config("policy", "main");
    int st = 0;
    const char *m = NULL;
    route_candidate_t *c = NULL;
    size_t n = 0;

    /* The embedded defaults: all three in C. */
    hooks_t *h = load(NULL);
    fake_t *f = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 1);
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0 && n >= 2);
    route_res_t ok = {.status = 200, .upstream_id = c[0].id};
    store_record_t *rec = records_build(&f->req, &ok, 1);
    hooks_on_response(h, &f->req, &ok, &rec);
    CHECK(rec != NULL); /* kept, untouched */
    route_res_t failed = {.status = 502, .error = "all upstreams failed"};
    hooks_on_response(h, &f->req, &failed, &rec);
    CHECK(rec != NULL);
    store_record_free(rec);
    CHECK(f->req.obj_ref == 0);
    hooks_release(h, &f->req);
    fake_free(f);
    f = fake_new("Bearer nope", "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    CHECK(st == 403 && strcmp(m, "wrong authorization header") == 0);
    CHECK(f->req.obj_ref == 0);
    hooks_release(h, &f->req);
    fake_free(f);
    hooks_free(h);

    /* pick_upstream overridden in Lua: authorize stays the C default (no req object until
     * pick_upstream runs), with its verdicts and messages. */
    h = load(script_dir("pick_only2", "return { pick_upstream = function(req, ups)\n"
                                      "  return { id = 42, sk = 'k', endpoint = 'http://x' }\n"
                                      "end }\n"));
    f = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 1);
    CHECK(f->req.obj_ref == 0);
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0 && n == 1 && c[0].id == 42);
    CHECK(f->req.obj_ref > 0);
    hooks_release(h, &f->req);
    fake_free(f);
    f = fake_new(NULL, "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 0);
    CHECK(st == 403 && strcmp(m, "authorization header should start with 'Bearer'") == 0);
    CHECK(f->req.obj_ref == 0);
    hooks_release(h, &f->req);
    fake_free(f);
    hooks_free(h);

    /* route.defaults holds C functions; returning one explicitly is the same value, so it runs
     * natively too. A wrapper is a Lua function: it runs in Lua and answers the same. */
    h = load(script_dir("explicit", "local route = require 'route'\n"
                                    "local d = route.defaults\n"
                                    "for _, k in ipairs{'authorize', 'pick_upstream', "
                                    "'on_response'} do\n"
                                    "  assert(debug.getinfo(d[k], 'S').what == 'C', k)\n"
                                    "end\n"
                                    "return { authorize = d.authorize,\n"
                                    "  on_response = function(req, res)\n"
                                    "    return d.on_response(req, res) end }\n"));
    f = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 1);
    CHECK(hooks_pick_upstream(h, &f->req, &c, &n, &m) == 0 && n >= 2);
    CHECK(f->req.obj_ref == 0);
    rec = records_build(&f->req, &failed, 1);
    hooks_on_response(h, &f->req, &failed, &rec); /* the wrapper: in Lua */
    CHECK(rec != NULL && f->req.obj_ref > 0);
    store_record_free(rec);
    hooks_release(h, &f->req);
    fake_free(f);
    hooks_free(h);

    h = load(script_dir("wrap_auth", "local route = require 'route'\n"
                                     "return { authorize = function(req)\n"
                                     "  return route.defaults.authorize(req) end }\n"));
    char msg[256];
    CHECK(auth(h, "Bearer tok-one", &st, msg, sizeof msg) == 1);
    CHECK(auth(h, "Bearer nope", &st, msg, sizeof msg) == 0);
    CHECK(st == 403 && strcmp(msg, "wrong authorization header") == 0);
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 0);
    CHECK(st == 403 && strcmp(msg, "authorization header should start with 'Bearer'") == 0);
    opts.noauth = 1;
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 1);
    opts.noauth = 0;
    set_config("noauth", "true"); /* the stored key, as route.config.get answers it */
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 1);
    hooks_free(h);
    h = load(NULL);
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 1);
    set_config("noauth", "");
    CHECK(auth(h, NULL, &st, msg, sizeof msg) == 0);
    hooks_free(h);

    /* Called from Lua on a list of the script's own: missing counts read as 0. */
    h = load(script_dir("own_list",
                        "local route = require 'route'\n"
                        "return { pick_upstream = function(req, ups)\n"
                        "  local own = { { id = 9, sk = 'k9', endpoint = 'http://9' },\n"
                        "    { id = 3, sk = 'k3', endpoint = 'http://3',"
                        " failed_count = 1 },\n"
                        "    { id = 7, sk = 'k7', endpoint = 'http://7',"
                        " success_count = 4 } }\n"
                        "  if req.model == 'none' then own = {} end\n"
                        "  local list, err = route.defaults.pick_upstream(req, own)\n"
                        "  if list and list[1] ~= own[3] then error('not the same"
                        " tables') end\n"
                        "  return list, err\n"
                        "end }\n"));
    char out[256];
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "7,9,3") == 0);
    pick(h, "none", out, sizeof out);
    CHECK(strcmp(out, "ERR:no upstream available: add one with -add or POST /admin/upstreams") ==
          0);
    set_config("policy", "round_robin_available");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "7,9") == 0);
    set_config("policy", "nope");
    pick(h, NULL, out, sizeof out);
    CHECK(strcmp(out, "ERR:unknown load balance policy 'nope'") == 0);
    set_config("policy", "main");
    hooks_free(h);

    /* A row an earlier Lua hook wrote itself replaces C's, with the C on_response too. */
    h = load(script_dir("own_row", "local route = require 'route'\n"
                                   "return { authorize = function(req)\n"
                                   "  route.record{ id = req.id, status = 299 }\n"
                                   "  return true end }\n"));
    f = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &f->req, &st, &m) == 1);
    rec = records_build(&f->req, &ok, 1);
    hooks_on_response(h, &f->req, &ok, &rec);
    CHECK(rec == NULL && f->req.recorded_own);
    hooks_release(h, &f->req);
    fake_free(f);
    hooks_free(h);
}

/* A request keeps the hook set it started with across a reload, C defaults included; the old
 * set goes with its last request (AddressSanitizer checks the freeing). */
static void test_reload_keeps_the_pinned_set(void) {
    const char *dir = script_dir("pinned", "return {}\n");
    hooks_t *h = load(dir);
    int st;
    const char *m;
    route_candidate_t *c;
    size_t n;
    fake_t *early = fake_new("Bearer tok-one", "{}", NULL);
    fake_t *early2 = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &early->req, &st, &m) == 1);
    CHECK(hooks_authorize(h, &early2->req, &st, &m) == 1);
    script_dir("pinned", "return { pick_upstream = function(req, ups)\n"
                         "  return { id = 42, sk = 'k', endpoint = 'http://x' }\n"
                         "end }\n");
    CHECK(hooks_reload(h, NULL) == 0);
    CHECK(hooks_pick_upstream(h, &early->req, &c, &n, &m) == 0 && n >= 2 && c[0].id != 42);
    CHECK(early->req.obj_ref == 0);
    fake_t *late = fake_new("Bearer tok-one", "{}", NULL);
    CHECK(hooks_authorize(h, &late->req, &st, &m) == 1);
    CHECK(hooks_pick_upstream(h, &late->req, &c, &n, &m) == 0 && n == 1 && c[0].id == 42);
    hooks_release(h, &early->req);
    script_dir("pinned", "return {}\n");
    CHECK(hooks_reload(h, NULL) == 0);
    CHECK(hooks_pick_upstream(h, &early2->req, &c, &n, &m) == 0 && n >= 2 && c[0].id != 42);
    CHECK(hooks_pick_upstream(h, &late->req, &c, &n, &m) == 0 && n == 1 && c[0].id == 42);
    hooks_release(h, &early2->req);
    hooks_release(h, &late->req);
    fake_free(early);
    fake_free(early2);
    fake_free(late);
    hooks_free(h);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_hooks.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(dbpath, sizeof dbpath, "%s/db.sqlite", tmpdir);
    ctx.opts = &opts;
    ctx.config = config_state_new();
    reopen_store();

    test_authorize();
    test_policies();
    test_override_pick_only();
    test_upstream_cache();
    test_errors();
    test_reload_and_shared();
    test_req_table();
    test_on_response();
    test_redact();
    test_examples();
    test_c_policies();
    test_c_policies_match_lua();
    test_c_defaults_called_natively();
    test_reload_keeps_the_pinned_set();

    store_close(ctx.store);
    config_state_free(ctx.config);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_DONE();
}
