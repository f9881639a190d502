/* upstream.h: outgoing HTTP/1.1 requests to upstreams: URL parsing, asynchronous DNS,
 * connect, a keep-alive pool per origin, response parsing, timeouts. Events reach the caller
 * through callbacks named for what happened (on_head, on_body, on_done, on_error). */
#ifndef ROUTE_UPSTREAM_H
#define ROUTE_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "route/ctx.h"
#include "route/http.h"

typedef struct upstream_url {
    int tls;
    char *host; /* without brackets for IPv6 */
    int port;
    char *base_path;   /* "/v1", "" for none; never ends in '/' */
    char *query;       /* the endpoint's own query without its '?' ("api-version=..."), "" */
    char *host_header; /* "host" or "host:port" as sent in Host */
} upstream_url_t;

/* Parses "http://host[:port][/path][?query][#fragment]" (https too); the fragment is dropped,
 * as a client drops it. Strings live in arena. 0, or -1 with *why set to a static message. */
int upstream_parse_url(arena_t *arena, const char *url, upstream_url_t *out, const char **why);

/* The parsed form of an endpoint string, from a per-loop cache (ctx->url_cache) keyed by the
 * string's content, so a request does not parse (or allocate) it again. The entry stays valid
 * while referenced, even after the cache drops it (the upstreams generation moved, or it
 * filled up). *label: "scheme://host[:port]/path", as shown in errors (never a query). NULL
 * with *why set when the URL is invalid or memory ran out. */
typedef struct upstream_url_ref upstream_url_ref_t;
upstream_url_ref_t *upstream_url_get(route_ctx_t *ctx, const char *endpoint,
                                     const upstream_url_t **url, const char **label,
                                     const char **why);
void upstream_url_release(upstream_url_ref_t *ref);
void upstream_url_cache_free(upstream_url_cache_t *cache);

enum upstream_error {
    UPSTREAM_ERR_DNS = 1,
    UPSTREAM_ERR_CONNECT,
    UPSTREAM_ERR_TLS,
    UPSTREAM_ERR_TIMEOUT, /* connect, headers or idle, as the message says */
    UPSTREAM_ERR_PROTOCOL,
    UPSTREAM_ERR_CLOSED, /* the upstream closed the connection early */
};

typedef struct upstream_callbacks {
    /* Response head. headers: lower-case names; content_length < 0 when not given. */
    void (*on_head)(void *ud, int status, const route_header_t *headers, size_t n_headers,
                    int64_t content_length);
    /* Body bytes, decoded from chunked framing. data lies in ref: retain ref to keep it. */
    void (*on_body)(void *ud, const char *data, size_t len, refbuf_t *ref);
    void (*on_done)(void *ud);
    void (*on_error)(void *ud, int kind, const char *message);
    /* A 101 to a request with opts.upgrade: the request ends here (no other callback) and the
     * connection's stream is the caller's, reading: set its callbacks (stream_set_data) before
     * returning, and close it when done. early: bytes the upstream sent after the 101 head (in
     * ref). headers as in on_head, valid during the call. */
    void (*on_upgrade)(void *ud, const route_header_t *headers, size_t n_headers,
                       struct stream *stream, const char *early, size_t early_len, refbuf_t *ref);
} upstream_callbacks_t;

typedef struct upstream_request_opts {
    const upstream_url_t *url;
    const char *method;
    const char *target;  /* path + query as sent */
    const char *headers; /* complete "Name: value\r\n" lines, Host included */
    size_t headers_len;
    const char *body; /* stays valid until on_done/on_error/cancel */
    size_t body_len;
    int head_request; /* HEAD: the response has no body */
    int upgrade;      /* headers ask to switch protocols: a 101 ends in on_upgrade */
    uint64_t connect_timeout_ms, header_timeout_ms, idle_timeout_ms;
    int64_t *connect_ns; /* may be NULL: receives the set-up time of a new connection */
} upstream_request_opts_t;

typedef struct upstream_req upstream_req_t;

upstream_pool_t *upstream_pool_new(route_ctx_t *ctx);
/* Closes idle connections; requests in flight must be cancelled first. */
void upstream_pool_free(upstream_pool_t *pool);
size_t upstream_pool_idle(const upstream_pool_t *pool);
/* Closes the idle connections (shutdown). */
void upstream_pool_close_idle(upstream_pool_t *pool);

/* Starts a request. Exactly one of on_done/on_error ends it, always from a later loop
 * iteration, never from inside this call. NULL only when out of memory. */
upstream_req_t *upstream_request(upstream_pool_t *pool, const upstream_request_opts_t *opts,
                                 const upstream_callbacks_t *cb, void *ud);
/* Stops a request: no more callbacks; its connection is closed, not pooled. */
void upstream_cancel(upstream_req_t *r);
/* Backpressure: stop / restart reading the response. */
void upstream_pause(upstream_req_t *r);
void upstream_resume(upstream_req_t *r);

/* Fire-and-forget POST for webhooks: bounded by timeout_ms, the outcome only logged.
 * headers: extra "Name: value\r\n" lines (Content-Type...). 0 when started, else -1 and why. */
int upstream_post(upstream_pool_t *pool, const char *url, const char *body, size_t body_len,
                  const char *headers, uint64_t timeout_ms, const char **why);

#endif
