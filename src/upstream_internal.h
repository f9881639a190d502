/* upstream_internal.h (private to upstream_pool.c, http1_client.c, webhook.c): the pool,
 * connection and request structs and the calls between the pool (connections, DNS, connect)
 * and the HTTP/1 client (one exchange on a connection). */
#ifndef ROUTE_UPSTREAM_INTERNAL_H
#define ROUTE_UPSTREAM_INTERNAL_H

#include <llhttp.h>

#include "http_headers.h"
#include "route/stream.h"
#include "route/upstream.h"

typedef struct upstream_conn upstream_conn_t;

typedef struct origin {
    char *host; /* with tls and port: what makes an origin */
    int tls, port;
    tls_resume_t *resume;  /* the last TLS session, offered by the next connection */
    upstream_conn_t *idle; /* most recently used first */
    size_t n_idle;
    size_t users; /* requests and connections pointing here: freed only at 0 */
    struct origin *next;
} origin_t;

struct upstream_pool {
    route_ctx_t *ctx;
    stream_env_t *env;
    origin_t *origins; /* most recently used first */
    size_t n_origins;
    llhttp_settings_t settings;
    size_t n_idle;
    upstream_req_t *free_reqs; /* recycled request objects, up to a ceiling */
    size_t n_free_reqs;
    log_limiter_t webhook_log; /* a failing webhook fails once per failed request */
    /* Webhooks in flight and the bytes they hold: a script posting on every failure while
     * the webhook host hangs would otherwise pile them up without bound. */
    size_t webhooks_in_flight, webhook_bytes;
    uint64_t webhooks_refused;
    log_limiter_t webhook_refused_log;
};

struct upstream_conn {
    upstream_pool_t *pool;
    origin_t *origin;
    stream_t *stream;
    uv_timer_t idle_timer;
    uint64_t idle_deadline; /* while in the pool, loop ms (deadline_set) */
    llhttp_t parser;
    refbuf_t *cur_ref; /* the block the parser is reading now */
    upstream_req_t *req;
    upstream_conn_t *idle_next, *idle_prev;
    int in_pool, closing;
    unsigned uses;
};

enum upstream_phase { PHASE_CONNECT, PHASE_HEADERS, PHASE_BODY };

struct upstream_req {
    upstream_pool_t *pool;
    upstream_conn_t *conn;
    upstream_request_opts_t opts;
    upstream_callbacks_t cb;
    void *ud;
    origin_t *origin;

    uv_getaddrinfo_t dns;
    struct addrinfo *addrs, *next_addr;
    uv_timer_t timer;
    uint64_t deadline; /* of the phase, loop ms (deadline_set); 0: none */
    buf_t head;        /* request line, the caller's header lines, CRLF; kept across recycling */

    arena_t arena; /* response headers */
    http_headers_t hh;

    enum upstream_phase phase;
    int ops; /* outstanding libuv callbacks that reference this request */
    int finished, paused, retried, got_byte, message_done, informational;
    int switched; /* a 101 answered opts.upgrade: the connection goes to the caller */
    int deferred_kind, dns_pending;
    int64_t connect_start_ns; /* a new connection is being set up since (0: none) */
    const char *deferred_msg;
    upstream_req_t *next_free;
};

/* upstream_pool.c */
/* The origin of url, with one more user (dropped by upstream_origin_release); NULL when out
 * of memory or when POOL_MAX_ORIGINS origins are in use. */
origin_t *upstream_origin_get(upstream_pool_t *pool, const upstream_url_t *url);
void upstream_origin_release(origin_t *o);
upstream_conn_t *upstream_conn_take_idle(origin_t *o);
/* Back to its origin's idle list, or closed when it cannot be reused. */
void upstream_conn_put(upstream_conn_t *c);
void upstream_conn_close(upstream_conn_t *c);
/* After a 101: the stream leaves the pool's hands (the connection object goes away). */
stream_t *upstream_conn_take_stream(upstream_conn_t *c);
/* Resolves (once per request) and connects, trying each address; ends in
 * http1_client_connected or http1_client_fail. */
void upstream_connect_start(upstream_req_t *r);
upstream_req_t *upstream_req_alloc(upstream_pool_t *pool);
void upstream_req_recycle(upstream_pool_t *pool, upstream_req_t *r);

/* http1_client.c */
void http1_client_connected(upstream_req_t *r);
void http1_client_fail(upstream_req_t *r, int kind, const char *message);
/* Fails from the next loop iteration (the API promises no callback from inside a call). */
void http1_client_fail_later(upstream_req_t *r, int kind, const char *message);
void http1_client_on_read(upstream_conn_t *c, ssize_t nread, const char *data, refbuf_t *ref);
void http1_client_on_write_error(upstream_conn_t *c, const char *message);
void http1_client_settings(llhttp_settings_t *settings);

#endif
