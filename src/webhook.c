/* webhook.c: fire-and-forget POSTs (Lua's route.webhook and friends).
 *
 * Owns: turning a URL and a body into one upstream request with its own copies, a label for
 * the logs that never shows the path's token or the query, the bound on webhooks in flight
 * (count and bytes; past it a post is refused, counted and logged, rate-limited), and logging
 * the outcome.
 * Must not: retry, block, or let the outcome reach a client request. */
#include <stdlib.h>
#include <string.h>

#include "route/upstream.h"
#include "upstream_internal.h"

/* Webhooks are error notices: a few per failing request at most. */
#define WEBHOOKS_MAX_IN_FLIGHT 256
#define WEBHOOK_BYTES_MAX      ((size_t)16 << 20)

typedef struct webhook {
    arena_t arena;
    upstream_url_t url;
    char *label; /* scheme://host only: webhook URLs carry secrets in the path and the query */
    int status;
    size_t bytes; /* counted in the pool's webhook_bytes while in flight */
    upstream_pool_t *pool;
} webhook_t;

static void webhook_free(webhook_t *w) {
    if (w->bytes) {
        w->pool->webhooks_in_flight--;
        w->pool->webhook_bytes -= w->bytes;
    }
    arena_free(&w->arena);
    free(w);
}

static void on_webhook_head(void *ud, int status, const route_header_t *h, size_t n, int64_t cl) {
    ((webhook_t *)ud)->status = status;
}

static void on_webhook_body(void *ud, const char *data, size_t len, refbuf_t *ref) {}

static void on_webhook_done(void *ud) {
    webhook_t *w = ud;
    if (w->status >= 300)
        route_log_limited(&w->pool->webhook_log, LOG_WARN, "webhook %s answered %d", w->label,
                          w->status);
    else
        route_log(LOG_DEBUG, "webhook %s answered %d", w->label, w->status);
    webhook_free(w);
}

static void on_webhook_error(void *ud, int kind, const char *message) {
    webhook_t *w = ud;
    route_log_limited(&w->pool->webhook_log, LOG_WARN, "webhook %s failed: %s", w->label, message);
    webhook_free(w);
}

int upstream_post(upstream_pool_t *pool, const char *url, const char *body, size_t body_len,
                  const char *headers, uint64_t timeout_ms, const char **why) {
    static const upstream_callbacks_t events = {
        .on_head = on_webhook_head,
        .on_body = on_webhook_body,
        .on_done = on_webhook_done,
        .on_error = on_webhook_error,
    };
    size_t bytes = body_len + (headers ? strlen(headers) : 0) + strlen(url) + 1;
    if (pool->webhooks_in_flight >= WEBHOOKS_MAX_IN_FLIGHT ||
        bytes > WEBHOOK_BYTES_MAX - pool->webhook_bytes) {
        pool->webhooks_refused++;
        route_log_limited(&pool->webhook_refused_log, LOG_WARN,
                          "webhooks: %zu in flight holding %zu bytes; refused %llu so far",
                          pool->webhooks_in_flight, pool->webhook_bytes,
                          (unsigned long long)pool->webhooks_refused);
        *why = "too many webhooks in flight";
        return -1;
    }
    webhook_t *w = calloc(1, sizeof(*w));
    if (!w) {
        *why = "out of memory";
        return -1;
    }
    w->pool = pool;
    w->bytes = bytes;
    pool->webhooks_in_flight++;
    pool->webhook_bytes += bytes;
    arena_init(&w->arena);
    if (upstream_parse_url(&w->arena, url, &w->url, why) != 0) {
        webhook_free(w);
        return -1;
    }
    /* Host only: webhook URLs carry their token in the path (Feishu) or the query. */
    w->label =
        arena_printf(&w->arena, "%s://%s", w->url.tls ? "https" : "http", w->url.host_header);
    /* The query goes with the request (webhook services put their token there). */
    char *target = arena_printf(&w->arena, "%s%s%s", *w->url.base_path ? w->url.base_path : "/",
                                *w->url.query ? "?" : "", w->url.query);
    char *hdrs = arena_printf(&w->arena, "Host: %s\r\nContent-Length: %zu\r\n%s",
                              w->url.host_header, body_len, headers ? headers : "");
    char *copy = arena_alloc(&w->arena, body_len + 1);
    if (!w->label || !target || !hdrs || !copy) {
        webhook_free(w);
        *why = "out of memory";
        return -1;
    }
    memcpy(copy, body, body_len);
    upstream_request_opts_t o = {
        .url = &w->url,
        .method = "POST",
        .target = target,
        .headers = hdrs,
        .headers_len = strlen(hdrs),
        .body = copy,
        .body_len = body_len,
        .connect_timeout_ms = timeout_ms,
        .header_timeout_ms = timeout_ms,
        .idle_timeout_ms = timeout_ms,
    };
    if (!upstream_request(pool, &o, &events, w)) {
        webhook_free(w);
        *why = "out of memory";
        return -1;
    }
    return 0;
}
