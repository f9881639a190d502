/* test_recycling.c: the per-loop recycling of the request path: the arena block pool (reuse
 * and ceiling), the id random source (refills, distinct ids, v7 layout), number text, the
 * one-allocation record (inline strings, replacing one, freeing both kinds), the extractor
 * pool (a recycled extractor starts clean), the endpoint URL cache (hits, invalid endpoints,
 * entries that outlive the cache's reset) and the deadline timers (moving a deadline later
 * costs no restart, and it still fires on time). */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "route/ctx.h"
#include "route/extract.h"
#include "route/store.h"
#include "route/stream.h"
#include "route/upstream.h"
#include "route/util.h"
#include "../../src/upstream_internal.h"
#include "testlib.h"

static void test_arena_pool(void) {
    arena_pool_t pool = {0};
    pool.max_free = 2;
    arena_t a, b, c;
    arena_init_pooled(&a, &pool);
    void *first = arena_alloc(&a, 100);
    CHECK(first != NULL);
    arena_free(&a);
    CHECK(pool.n_free == 1);
    /* The block comes back: the same memory serves the next request. */
    arena_init_pooled(&b, &pool);
    CHECK(arena_alloc(&b, 100) == first);
    CHECK(pool.n_free == 0);
    /* A big allocation has a block of its own, which is not pooled. */
    CHECK(arena_alloc(&b, 100000) != NULL);
    arena_free(&b);
    CHECK(pool.n_free == 1);
    /* Three arenas' blocks back, but the ceiling keeps two. */
    arena_init_pooled(&a, &pool);
    arena_init_pooled(&b, &pool);
    arena_init_pooled(&c, &pool);
    CHECK(arena_alloc(&a, 10) && arena_alloc(&b, 10) && arena_alloc(&c, 10));
    arena_free(&a);
    arena_free(&b);
    arena_free(&c);
    CHECK(pool.n_free == 2);
    /* Allocations after reuse are still aligned and separate. */
    arena_init_pooled(&a, &pool);
    char *x = arena_strdup(&a, "abc"), *y = arena_alloc(&a, 5);
    CHECK(x && y && ((uintptr_t)y & 7) == 0 && y >= x + 4 && strcmp(x, "abc") == 0);
    arena_free(&a);
    arena_pool_release(&pool);
    CHECK(pool.n_free == 0 && pool.free == NULL);
}

static void test_rng(void) {
    util_rng_t *rng = calloc(1, sizeof(*rng));
    unsigned char a[16], b[16];
    CHECK(util_rng_bytes(rng, a, sizeof a) == 0);
    CHECK(rng->avail == UTIL_RNG_BLOCK - 16);
    CHECK(util_rng_bytes(rng, b, sizeof b) == 0 && memcmp(a, b, sizeof a) != 0);
    /* Across a refill: more than a block at once. */
    unsigned char *big = malloc(UTIL_RNG_BLOCK * 2 + 7);
    CHECK(util_rng_bytes(rng, big, UTIL_RNG_BLOCK * 2 + 7) == 0);
    free(big);
    int64_t now = util_now_wall_ns();
    enum { N = 2000 };
    char(*ids)[37] = malloc(N * sizeof(*ids));
    int layout = 1;
    for (int i = 0; i < N; i++) {
        util_uuid7_rng(rng, ids[i], now);
        layout &= strlen(ids[i]) == 36 && ids[i][14] == '7' && strchr("89ab", ids[i][19]) &&
                  ids[i][8] == '-' && ids[i][13] == '-' && ids[i][18] == '-' && ids[i][23] == '-';
    }
    CHECK(layout);
    int distinct = 1;
    for (int i = 0; i < N && distinct; i++)
        for (int j = i + 1; j < N; j++)
            if (strcmp(ids[i], ids[j]) == 0) distinct = 0;
    CHECK(distinct);
    /* The time comes first, like util_uuid7's. */
    char plain[37];
    util_uuid7(plain, now);
    CHECK(memcmp(plain, ids[0], 13) == 0);
    free(ids);
    free(rng);
}

static void test_numbers(void) {
    char out[32];
    CHECK(util_fmt_i64(out, 0) == 1 && strcmp(out, "0") == 0);
    CHECK(util_fmt_i64(out, 1234567) == 7 && strcmp(out, "1234567") == 0);
    CHECK(util_fmt_i64(out, -42) == 3 && strcmp(out, "-42") == 0);
    CHECK(util_fmt_i64(out, INT64_MIN) == 20 && strcmp(out, "-9223372036854775808") == 0);
    CHECK(util_fmt_hex(out, 0) == 1 && strcmp(out, "0") == 0);
    CHECK(util_fmt_hex(out, 0x1f40) == 4 && strcmp(out, "1f40") == 0);
    CHECK(util_fmt_hex(out, UINT64_MAX) == 16 && strcmp(out, "ffffffffffffffff") == 0);
    buf_t b = {0};
    CHECK(buf_append_i64(&b, 200) == 0 && buf_append_i64(&b, -7) == 0 &&
          strcmp(b.data, "200-7") == 0);
    buf_free(&b);
}

static void test_record_inline(void) {
    store_record_t *r = store_record_new_inline("0190c0de-0000-7000-8000-000000000000", 5, 16);
    CHECK(r && strcmp(r->id, "0190c0de-0000-7000-8000-000000000000") == 0 && r->created_at == 5);
    char *o = store_record_inline(r);
    memcpy(o, "1.2.3.4", 8);
    r->ip = o;
    memcpy(o + 8, "gpt-4o", 7);
    r->model = o + 8;
    /* Replacing an inline string does not free it; a malloc'd one replaced again is freed. */
    CHECK(store_record_set_string(r, &r->model, "other", 5) == 0 && strcmp(r->model, "other") == 0);
    CHECK(store_record_set_string(r, &r->model, "third", 5) == 0 && strcmp(r->model, "third") == 0);
    CHECK(store_record_set_string(r, &r->error, "boom", 4) == 0 && strcmp(r->error, "boom") == 0);
    CHECK(strcmp(r->ip, "1.2.3.4") == 0);
    store_record_free(r); /* ASan: no leak, no bad free */
    r = store_record_new_id("x", 1);
    CHECK(r && r->inline_len == 0 && store_record_set_string(r, &r->body, "", 0) == 0);
    store_record_free(r);
}

static void test_extract_pool(void) {
    extract_pool_t pool = {0};
    static const char ct[] = "application/json";
    static const char body[] =
        "{\"model\":\"m-1\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],"
        "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,"
        "\"total_tokens\":3}}";
    extract_t *x = extract_pool_get(&pool, ct, sizeof ct - 1);
    extract_feed(x, body, sizeof body - 1);
    extract_finish(x);
    size_t n = 0;
    int64_t p = 0, c = 0, t = 0;
    CHECK(strcmp(extract_model(x), "m-1") == 0);
    CHECK(extract_content(x, &n) && n == 2 && extract_usage(x, &p, &c, &t) && t == 3);
    extract_pool_put(&pool, x);
    CHECK(pool.n_free == 1);
    /* Recycled: nothing of the last response is left. */
    extract_t *y = extract_pool_get(&pool, NULL, 0);
    CHECK(y == x && pool.n_free == 0);
    extract_finish(y);
    CHECK(extract_model(y) == NULL && extract_content(y, &n) == NULL && n == 0);
    CHECK(!extract_usage(y, NULL, NULL, NULL));
    extract_pool_put(&pool, y);
    static const char sse_ct[] = "text/event-stream";
    static const char ev[] =
        "data: {\"model\":\"m-2\",\"choices\":[{\"delta\":{\"content\":\"yo\"}}]}\n\n";
    y = extract_pool_get(&pool, sse_ct, sizeof sse_ct - 1);
    extract_feed(y, ev, sizeof ev - 1);
    extract_finish(y);
    CHECK(strcmp(extract_model(y), "m-2") == 0 && extract_content(y, &n) && n == 2);
    extract_pool_put(&pool, y);
    extract_pool_release(&pool);
    CHECK(pool.n_free == 0);

    arena_t a;
    arena_init(&a);
    char *model = NULL;
    int stream = 0;
    static const char req[] = "{\"model\":\"gpt\\u002d4\",\"stream\":true}";
    extract_request_fields_arena(req, sizeof req - 1, &a, &model, &stream);
    CHECK(model && strcmp(model, "gpt-4") == 0 && stream == 1);
    extract_request_fields_arena("nope", 4, &a, &model, &stream);
    CHECK(model == NULL && stream == 0);
    arena_free(&a);
}

static void test_url_cache(void) {
    route_ctx_t *ctx = calloc(1, sizeof(*ctx));
    const upstream_url_t *u1 = NULL, *u2 = NULL;
    const char *label = NULL, *why = NULL;
    char endpoint[] = "https://api.example.com:8443/v1/?x=1";
    upstream_url_ref_t *r1 = upstream_url_get(ctx, endpoint, &u1, &label, &why);
    CHECK(r1 && u1->tls && u1->port == 8443 && strcmp(u1->host, "api.example.com") == 0);
    CHECK(strcmp(u1->base_path, "/v1") == 0 &&
          strcmp(u1->host_header, "api.example.com:8443") == 0);
    CHECK(strcmp(label, "https://api.example.com:8443/v1") == 0);
    /* The same text elsewhere is the same entry. */
    char copy[sizeof endpoint];
    memcpy(copy, endpoint, sizeof endpoint);
    upstream_url_ref_t *r2 = upstream_url_get(ctx, copy, &u2, &label, &why);
    CHECK(r2 == r1 && u2 == u1);
    upstream_url_release(r2);
    /* A query or fragment never becomes part of the host (errors and logs name the host). */
    const upstream_url_t *u3 = NULL;
    upstream_url_ref_t *r3 =
        upstream_url_get(ctx, "https://h.example?api-key=SECRET", &u3, &label, &why);
    CHECK(r3 && strcmp(u3->host, "h.example") == 0 && strcmp(u3->host_header, "h.example") == 0);
    CHECK(u3->port == 443 && strcmp(u3->base_path, "") == 0 && !strstr(label, "SECRET"));
    upstream_url_release(r3);
    r3 = upstream_url_get(ctx, "http://h.example:8080#frag", &u3, &label, &why);
    CHECK(r3 && strcmp(u3->host, "h.example") == 0 && u3->port == 8080);
    upstream_url_release(r3);
    /* Invalid endpoints are reported, every time. */
    CHECK(upstream_url_get(ctx, "ftp://x", &u2, &label, &why) == NULL && why &&
          strstr(why, "http://"));
    why = NULL;
    CHECK(upstream_url_get(ctx, "ftp://x", &u2, &label, &why) == NULL && why);
    /* Past the cache's size it starts over; an entry still held stays valid. */
    for (int i = 0; i < 300; i++) {
        char e[64];
        snprintf(e, sizeof e, "http://h%d/v1", i);
        upstream_url_ref_t *r = upstream_url_get(ctx, e, &u2, &label, &why);
        CHECK(r != NULL);
        upstream_url_release(r);
    }
    CHECK(strcmp(u1->host, "api.example.com") == 0);
    upstream_url_release(r1);
    route_ctx_release_caches(ctx);
    free(ctx);
}

/* Origins are bounded: one nobody uses is forgotten when a new one would pass the bound, and
 * past it with every origin in use a request gets no origin (a clear error, not growth). */
static void test_origin_bound(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    route_ctx_t *ctx = calloc(1, sizeof(*ctx));
    ctx->loop = &loop;
    upstream_pool_t *pool = upstream_pool_new(ctx);
    CHECK(pool != NULL);
    arena_t arena;
    arena_init(&arena);
    origin_t *held[600];
    size_t n_held = 0;
    for (int i = 0; i < 600; i++) {
        char e[64];
        snprintf(e, sizeof e, "http://h%d:81/v1", i);
        upstream_url_t url;
        const char *why = NULL;
        CHECK(upstream_parse_url(&arena, e, &url, &why) == 0);
        origin_t *o = upstream_origin_get(pool, &url);
        CHECK(pool->n_origins <= 256);
        if (i < 300) {
            CHECK(o != NULL);
            upstream_origin_release(o); /* unused at once: can be forgotten */
            continue;
        }
        /* From here on, hold them: the bound then refuses new ones. */
        if (o) {
            held[n_held++] = o;
        } else {
            CHECK(n_held == 256);
            break;
        }
    }
    CHECK(n_held == 256 && pool->n_origins == 256);
    upstream_origin_release(held[0]);
    upstream_url_t url;
    const char *why = NULL;
    CHECK(upstream_parse_url(&arena, "http://fresh:81/v1", &url, &why) == 0);
    CHECK(upstream_origin_get(pool, &url) != NULL && pool->n_origins == 256);
    upstream_pool_free(pool);
    arena_free(&arena);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(ctx);
}

typedef struct {
    uv_timer_t timer;
    uint64_t deadline;
    int fired;
    uint64_t fired_at;
} deadline_case_t;

static void on_deadline(uv_timer_t *t) {
    deadline_case_t *d = t->data;
    if (!deadline_due(t, &d->deadline, on_deadline)) return;
    d->fired++;
    d->fired_at = uv_now(t->loop);
}

static void test_deadline(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    deadline_case_t d = {0};
    uv_timer_init(&loop, &d.timer);
    d.timer.data = &d;
    uint64_t start = uv_now(&loop);
    deadline_set(&d.timer, &d.deadline, 30, on_deadline);
    uint64_t due = uv_timer_get_due_in(&d.timer);
    /* Later: the timer is left as it is. */
    deadline_set(&d.timer, &d.deadline, 80, on_deadline);
    CHECK(uv_timer_get_due_in(&d.timer) == due);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(d.fired == 1 && d.fired_at >= start + 80);
    /* Earlier: it is restarted. */
    d.fired = 0;
    start = uv_now(&loop);
    deadline_set(&d.timer, &d.deadline, 5000, on_deadline);
    deadline_set(&d.timer, &d.deadline, 10, on_deadline);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(d.fired == 1 && d.fired_at < start + 5000);
    /* Woken early: the long deadline does not fire then, and a shorter one set next (the
     * body's idle timeout after the headers') needs no restart. */
    d.fired = 0;
    start = uv_now(&loop);
    deadline_set_early(&d.timer, &d.deadline, 5000, 20, on_deadline);
    CHECK(uv_timer_get_due_in(&d.timer) <= 20);
    deadline_set(&d.timer, &d.deadline, 40, on_deadline);
    CHECK(uv_timer_get_due_in(&d.timer) <= 20);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(d.fired == 1 && d.fired_at >= start + 40 && d.fired_at < start + 5000);
    /* Cleared: the timer fires and does nothing. */
    d.fired = 0;
    deadline_set(&d.timer, &d.deadline, 10, on_deadline);
    deadline_set(&d.timer, &d.deadline, 0, on_deadline);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(d.fired == 0);
    uv_close((uv_handle_t *)&d.timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

int main(void) {
    test_arena_pool();
    test_rng();
    test_numbers();
    test_record_inline();
    test_extract_pool();
    test_url_cache();
    test_origin_bound();
    test_deadline();
    return TEST_DONE();
}
