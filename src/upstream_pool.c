/* upstream_pool.c: the upstream connections of one event loop.
 *
 * Owns: origins (scheme, host, port) with their keep-alive idle lists and saved TLS sessions,
 * asynchronous DNS (uv_getaddrinfo), connecting (trying each resolved address, through
 * stream.c, TLS included), idle timeouts, closing idle connections the peer closed, the
 * bounds (POOL_MAX_ORIGINS origins, idle connections per origin and in all), handing a
 * connection's stream over after a 101, and the free list of request objects.
 * Must not: write requests or parse responses (http1_client.c), decide anything about
 * failover (proxy.c), or block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_internal.h"

#define POOL_IDLE_MS             (60 * 1000)
#define POOL_MAX_IDLE_PER_ORIGIN 64
/* Idle connections of the whole pool: many origins (scripts posting webhooks anywhere, an
 * operator's many endpoints) must not each keep 64 sockets open. */
#define POOL_MAX_IDLE 1024
/* Origins known at once. One without users is forgotten when a new one would pass this (its
 * saved TLS session goes with it), so endpoints that come and go cannot grow the list. */
#define POOL_MAX_ORIGINS 256
#define FREE_REQS_MAX    256

static void try_next_address(upstream_req_t *r, const char *last_error);

/* ---------------------------------------------------------------- connections */

static void on_conn_timer_closed(uv_handle_t *h) {
    upstream_conn_t *c = h->data;
    upstream_origin_release(c->origin);
    free(c);
}

static void pool_remove(upstream_conn_t *c) {
    if (!c->in_pool) return;
    origin_t *o = c->origin;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        o->idle = c->idle_next;
    if (c->idle_next) c->idle_next->idle_prev = c->idle_prev;
    c->idle_next = c->idle_prev = NULL;
    c->in_pool = 0;
    o->n_idle--;
    c->pool->n_idle--;
    c->idle_deadline = 0; /* the timer, if it fires, finds nothing to do */
}

void upstream_conn_close(upstream_conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    pool_remove(c);
    stream_close(c->stream);
    c->stream = NULL;
    /* At shutdown uv_walk may have closed the handle already. */
    if (!uv_is_closing((uv_handle_t *)&c->idle_timer))
        uv_close((uv_handle_t *)&c->idle_timer, on_conn_timer_closed);
}

stream_t *upstream_conn_take_stream(upstream_conn_t *c) {
    stream_t *s = c->stream;
    c->stream = NULL;
    c->req = NULL;
    upstream_conn_close(c);
    return s;
}

static void on_conn_read(stream_t *s, ssize_t nread, const char *data, refbuf_t *ref) {
    upstream_conn_t *c = stream_data(s);
    if (!c->req) {
        upstream_conn_close(c); /* idle: the peer closed, or sent bytes nobody asked for */
        return;
    }
    http1_client_on_read(c, nread, data, ref);
}

static void on_conn_write_error(stream_t *s, int status) {
    upstream_conn_t *c = stream_data(s);
    if (!c->req) {
        upstream_conn_close(c);
        return;
    }
    http1_client_on_write_error(c, stream_error(s));
}

static void on_conn_open(stream_t *s, int status) {
    upstream_conn_t *c = stream_data(s);
    upstream_req_t *r = c->req;
    if (!r) {
        upstream_conn_close(c);
        return;
    }
    if (status == 0) {
        http1_client_connected(r);
        return;
    }
    if (stream_connected(s)) {
        /* The TCP connection was up: the TLS handshake failed, not an address to skip. */
        char msg[300];
        snprintf(msg, sizeof(msg), "%s", stream_error(s));
        int closed = status == UV_EOF || status == UV_ECONNRESET;
        http1_client_fail(r, closed ? UPSTREAM_ERR_CLOSED : UPSTREAM_ERR_TLS,
                          closed ? "upstream closed the connection during the TLS handshake" : msg);
        return;
    }
    try_next_address(r, stream_error(s));
}

static const stream_callbacks_t conn_events = {
    .on_read = on_conn_read,
    .on_open = on_conn_open,
    .on_write_error = on_conn_write_error,
};

static void on_pool_idle_timeout(uv_timer_t *t) {
    upstream_conn_t *c = t->data;
    if (deadline_due(t, &c->idle_deadline, on_pool_idle_timeout) && c->in_pool)
        upstream_conn_close(c);
}

void upstream_conn_put(upstream_conn_t *c) {
    origin_t *o = c->origin;
    c->req = NULL;
    if (c->closing || o->n_idle >= POOL_MAX_IDLE_PER_ORIGIN || c->pool->n_idle >= POOL_MAX_IDLE ||
        c->pool->ctx->shutting_down) {
        upstream_conn_close(c);
        return;
    }
    /* An idle connection keeps reading so a close by the peer is noticed at once; the
     * stream holds no read block between reads, so idle connections stay small. */
    stream_read_start(c->stream);
    c->in_pool = 1;
    c->idle_prev = NULL;
    c->idle_next = o->idle;
    if (o->idle) o->idle->idle_prev = c;
    o->idle = c;
    o->n_idle++;
    c->pool->n_idle++;
    deadline_set(&c->idle_timer, &c->idle_deadline, POOL_IDLE_MS, on_pool_idle_timeout);
}

upstream_conn_t *upstream_conn_take_idle(origin_t *o) {
    upstream_conn_t *c = o->idle;
    if (c) pool_remove(c);
    return c;
}

/* ---------------------------------------------------------------- DNS and connect */

static void try_next_address(upstream_req_t *r, const char *last_error) {
    if (r->conn) {
        r->conn->req = NULL;
        upstream_conn_close(r->conn);
        r->conn = NULL;
    }
    struct addrinfo *ai = r->next_addr;
    while (ai && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    if (!ai) {
        char msg[160];
        snprintf(msg, sizeof(msg), "connect to %s:%d failed: %s", r->opts.url->host,
                 r->opts.url->port, last_error ? last_error : "no address");
        http1_client_fail(r, UPSTREAM_ERR_CONNECT, msg);
        return;
    }
    r->next_addr = ai->ai_next;
    upstream_pool_t *pool = r->pool;
    upstream_conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        http1_client_fail(r, UPSTREAM_ERR_CONNECT, "out of memory");
        return;
    }
    tls_config_t *tls = r->opts.url->tls ? pool->ctx->tls_client : NULL;
    int rc = 0;
    c->stream = stream_connect(pool->env, ai->ai_addr, tls, r->opts.url->host, &r->origin->resume,
                               &conn_events, c, &rc);
    if (!c->stream) {
        free(c);
        if (rc == UV_EPROTO) {
            http1_client_fail(r, UPSTREAM_ERR_TLS, "TLS set-up failed");
            return;
        }
        try_next_address(r, uv_strerror(rc));
        return;
    }
    c->pool = pool;
    c->origin = r->origin;
    c->origin->users++;
    uv_timer_init(pool->ctx->loop, &c->idle_timer);
    c->idle_timer.data = c;
    r->conn = c;
    c->req = r;
}

static void on_dns(uv_getaddrinfo_t *q, int status, struct addrinfo *res) {
    upstream_req_t *r = q->data;
    r->ops--;
    r->dns_pending = 0;
    if (r->finished) {
        if (res) uv_freeaddrinfo(res);
        upstream_req_recycle(r->pool, r);
        return;
    }
    if (status < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "DNS lookup of %s failed: %s", r->opts.url->host,
                 uv_strerror(status));
        http1_client_fail(r, UPSTREAM_ERR_DNS, msg);
        return;
    }
    if (r->addrs) uv_freeaddrinfo(r->addrs);
    r->addrs = res;
    r->next_addr = res;
    try_next_address(r, NULL);
}

void upstream_connect_start(upstream_req_t *r) {
    r->connect_start_ns = util_now_mono_ns();
    if (r->opts.url->tls && !r->pool->ctx->tls_client) {
        http1_client_fail_later(r, UPSTREAM_ERR_TLS, "no CA certificates loaded");
        return;
    }
    if (r->addrs) { /* a retry: the name is resolved already */
        r->next_addr = r->addrs;
        try_next_address(r, NULL);
        return;
    }
    char port[24];
    util_fmt_i64(port, r->opts.url->port);
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    r->dns.data = r;
    int rc = uv_getaddrinfo(r->pool->ctx->loop, &r->dns, on_dns, r->opts.url->host, port, &hints);
    if (rc < 0) {
        http1_client_fail_later(r, UPSTREAM_ERR_DNS, "DNS lookup could not start");
        return;
    }
    r->ops++;
    r->dns_pending = 1;
}

/* ---------------------------------------------------------------- origins and requests */

static void origin_free(origin_t *o) {
    tls_resume_free(o->resume);
    free(o->host);
    free(o);
}

/* Forgets origins nobody uses (no request, no connection, idle ones included). */
static void origins_sweep(upstream_pool_t *pool) {
    for (origin_t **pp = &pool->origins, *o; (o = *pp);) {
        if (o->users == 0) {
            *pp = o->next;
            origin_free(o);
            pool->n_origins--;
        } else {
            pp = &o->next;
        }
    }
}

origin_t *upstream_origin_get(upstream_pool_t *pool, const upstream_url_t *url) {
    /* Compared field by field, no key text built: this runs for every request. The one found
     * moves to the front, so the busy origins are found first. */
    for (origin_t **pp = &pool->origins, *o; (o = *pp); pp = &o->next) {
        if (o->port == url->port && o->tls == url->tls && strcmp(o->host, url->host) == 0) {
            if (pp != &pool->origins) {
                *pp = o->next;
                o->next = pool->origins;
                pool->origins = o;
            }
            o->users++;
            return o;
        }
    }
    if (pool->n_origins >= POOL_MAX_ORIGINS) origins_sweep(pool);
    if (pool->n_origins >= POOL_MAX_ORIGINS) return NULL;
    origin_t *o = calloc(1, sizeof(*o));
    if (!o || !(o->host = strdup(url->host))) {
        free(o);
        return NULL;
    }
    o->tls = url->tls;
    o->port = url->port;
    o->users = 1;
    o->next = pool->origins;
    pool->origins = o;
    pool->n_origins++;
    return o;
}

void upstream_origin_release(origin_t *o) {
    if (o && o->users) o->users--;
}

upstream_req_t *upstream_req_alloc(upstream_pool_t *pool) {
    upstream_req_t *r = pool->free_reqs;
    if (r) {
        pool->free_reqs = r->next_free;
        pool->n_free_reqs--;
        buf_t head = r->head;
        http_headers_t hh = r->hh;
        memset(r, 0, sizeof(*r));
        head.len = 0;
        r->head = head;
        r->hh = hh;
    } else if (!(r = calloc(1, sizeof(*r)))) {
        return NULL;
    } else {
        /* Names must be tokens: llhttp lets "Name : value" through in responses, and such
         * a line would reach the client as it came ("Transfer-Encoding : chunked" next to
         * the framing the server adds). A bad upstream response is a 502, as any other. */
        http_headers_init(&r->hh, 4 * HTTP_MAX_HEADER_BYTES, 256, 1);
    }
    http_headers_reset(&r->hh);
    r->pool = pool;
    arena_init_pooled(&r->arena, &pool->ctx->arena_pool);
    return r;
}

/* Frees r once it is finished and no libuv callback still refers to it. */
void upstream_req_recycle(upstream_pool_t *pool, upstream_req_t *r) {
    if (!r->finished || r->ops > 0) return;
    if (r->addrs) uv_freeaddrinfo(r->addrs);
    r->addrs = NULL;
    upstream_origin_release(r->origin);
    r->origin = NULL;
    arena_free(&r->arena);
    if (pool->n_free_reqs < FREE_REQS_MAX && !pool->ctx->shutting_down) {
        r->next_free = pool->free_reqs;
        pool->free_reqs = r;
        pool->n_free_reqs++;
        return;
    }
    buf_free(&r->head);
    http_headers_free(&r->hh);
    free(r);
}

upstream_pool_t *upstream_pool_new(route_ctx_t *ctx) {
    upstream_pool_t *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->ctx = ctx;
    if (!(pool->env = stream_env_new(ctx->loop))) {
        free(pool);
        return NULL;
    }
    http1_client_settings(&pool->settings);
    return pool;
}

size_t upstream_pool_idle(const upstream_pool_t *pool) {
    return pool->n_idle;
}

void upstream_pool_close_idle(upstream_pool_t *pool) {
    for (origin_t *o = pool->origins; o; o = o->next)
        while (o->idle)
            upstream_conn_close(o->idle);
}

void upstream_pool_free(upstream_pool_t *pool) {
    if (!pool) return;
    upstream_pool_close_idle(pool);
    origin_t *o = pool->origins;
    while (o) {
        origin_t *next = o->next;
        origin_free(o);
        o = next;
    }
    while (pool->free_reqs) {
        upstream_req_t *r = pool->free_reqs;
        pool->free_reqs = r->next_free;
        buf_free(&r->head);
        http_headers_free(&r->hh);
        free(r);
    }
    stream_env_free(pool->env);
    free(pool);
}
