/* upstream.c: outgoing HTTP/1.1 requests of one event loop.
 *
 * Owns: upstream URL parsing, asynchronous DNS (uv_getaddrinfo), connecting (trying each
 * resolved address), the keep-alive pool per origin, llhttp response parsing, and the
 * connect / response-header / idle-body timeouts. A request that finds its pooled connection
 * closed by the peer before any response byte is retried once on a fresh connection.
 * Must not: decide anything about failover, headers or records (proxy.c does), or block. */
#include "route/upstream.h"

#include "route/tls.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define UPSTREAM_READ_BUF        (64 * 1024)
#define POOL_IDLE_MS             (60 * 1000)
#define POOL_MAX_IDLE_PER_ORIGIN 64

typedef struct upstream_conn upstream_conn_t;

typedef struct origin {
    char *key;
    tls_resume_t *resume;  /* the last TLS session, offered by the next connection */
    upstream_conn_t *idle; /* most recently used first */
    size_t n_idle;
    struct origin *next;
} origin_t;

struct upstream_pool {
    route_ctx_t *ctx;
    origin_t *origins;
    llhttp_settings_t settings;
    size_t n_idle;
};

struct upstream_conn {
    upstream_pool_t *pool;
    origin_t *origin;
    uv_tcp_t tcp;
    uv_timer_t idle_timer;
    llhttp_t parser;
    refbuf_t *rbuf;  /* bytes as read from the socket */
    tls_conn_t *tls; /* https: rbuf holds ciphertext, pbuf the plaintext */
    refbuf_t *pbuf;
    refbuf_t *cur_ref; /* the block the parser is reading now */
    upstream_req_t *req;
    upstream_conn_t *idle_next, *idle_prev;
    int in_pool, closing, handles_open, tls_ready;
    unsigned uses;
};

enum phase { PHASE_CONNECT, PHASE_HEADERS, PHASE_BODY };

struct upstream_req {
    upstream_pool_t *pool;
    upstream_conn_t *conn;
    upstream_request_opts_t opts;
    upstream_callbacks_t cb;
    void *ud;
    origin_t *origin;

    uv_getaddrinfo_t dns;
    struct addrinfo *addrs, *next_addr;
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_timer_t timer;
    buf_t head; /* request line + headers as sent */

    arena_t arena; /* response headers */
    buf_t hname, hval;
    route_header_t *headers;
    size_t n_headers, headers_cap;

    enum phase phase;
    int ops; /* outstanding libuv callbacks that reference this request */
    int finished, paused, retried, got_byte, message_done, informational;
    int deferred_kind, dns_pending, writing;
    const char *deferred_msg;
};

static void conn_close(upstream_conn_t *c);
static void req_start_connect(upstream_req_t *r);
static void req_send(upstream_req_t *r);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static int conn_parse(upstream_conn_t *c, upstream_req_t *r, const char *data, size_t len,
                      refbuf_t *ref);

/* ---------------------------------------------------------------- URL */

int upstream_parse_url(arena_t *arena, const char *url, upstream_url_t *out, const char **why) {
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
        out->port = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        out->tls = 1;
        out->port = 443;
    } else {
        *why = "endpoint must start with http:// or https://";
        return -1;
    }
    const char *host_end, *host_start = p;
    const char *slash = strchr(p, '/');
    const char *auth_end = slash ? slash : p + strlen(p);
    if (memchr(p, '@', (size_t)(auth_end - p))) {
        *why = "user info in endpoint URLs is not supported";
        return -1;
    }
    const char *port_sep = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(auth_end - p));
        if (!rb) {
            *why = "bad IPv6 address in endpoint";
            return -1;
        }
        host_start = p + 1;
        host_end = rb;
        if (rb + 1 < auth_end) {
            if (rb[1] != ':') {
                *why = "bad endpoint host";
                return -1;
            }
            port_sep = rb + 1;
        }
    } else {
        port_sep = memchr(p, ':', (size_t)(auth_end - p));
        host_end = port_sep ? port_sep : auth_end;
    }
    if (host_end == host_start) {
        *why = "endpoint has no host";
        return -1;
    }
    if (port_sep) {
        char *end;
        long port = strtol(port_sep + 1, &end, 10);
        if (end != auth_end || port <= 0 || port > 65535) {
            *why = "bad port in endpoint";
            return -1;
        }
        out->port = (int)port;
    }
    out->host = arena_strndup(arena, host_start, (size_t)(host_end - host_start));
    out->host_header = arena_strndup(arena, p, (size_t)(auth_end - p));
    const char *path = auth_end;
    size_t plen = strcspn(path, "?#");
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    out->base_path = arena_strndup(arena, path, plen);
    if (!out->host || !out->host_header || !out->base_path) {
        *why = "out of memory";
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- request lifetime */

static void req_maybe_free(upstream_req_t *r) {
    if (!r->finished || r->ops > 0) return;
    if (r->addrs) uv_freeaddrinfo(r->addrs);
    buf_free(&r->head);
    buf_free(&r->hname);
    buf_free(&r->hval);
    arena_free(&r->arena);
    free(r);
}

static void on_req_timer_closed(uv_handle_t *h) {
    upstream_req_t *r = h->data;
    r->ops--;
    req_maybe_free(r);
}

/* Ends the request: no callback will follow. */
static void req_finish(upstream_req_t *r) {
    r->finished = 1;
    uv_close((uv_handle_t *)&r->timer, on_req_timer_closed);
}

static void req_detach_conn(upstream_req_t *r, int close_it) {
    upstream_conn_t *c = r->conn;
    if (!c) return;
    r->conn = NULL;
    c->req = NULL;
    if (close_it) conn_close(c);
}

static void req_fail(upstream_req_t *r, int kind, const char *message) {
    if (r->finished) return;
    req_detach_conn(r, 1);
    req_finish(r);
    r->cb.on_error(r->ud, kind, message);
}

static void conn_pool_put(upstream_conn_t *c);

static void req_complete(upstream_req_t *r, int reuse_conn) {
    if (r->finished) return;
    upstream_conn_t *c = r->conn;
    req_detach_conn(r, 0);
    if (c) {
        /* The upstream answered before reading all of the body: the write still in flight
         * points into the client's body, which on_done frees. Closing cancels it. */
        if (reuse_conn && !r->writing)
            conn_pool_put(c);
        else
            conn_close(c);
    }
    req_finish(r);
    r->cb.on_done(r->ud);
}

static void on_req_timer(uv_timer_t *t) {
    upstream_req_t *r = t->data;
    if (r->deferred_kind) {
        req_fail(r, r->deferred_kind, r->deferred_msg);
        return;
    }
    char msg[96];
    const char *what = r->phase == PHASE_CONNECT   ? "connect"
                       : r->phase == PHASE_HEADERS ? "response headers"
                                                   : "idle (no body bytes)";
    uint64_t ms = r->phase == PHASE_CONNECT   ? r->opts.connect_timeout_ms
                  : r->phase == PHASE_HEADERS ? r->opts.header_timeout_ms
                                              : r->opts.idle_timeout_ms;
    snprintf(msg, sizeof(msg), "timeout: %s after %.3g s", what, (double)ms / 1000.0);
    req_fail(r, UPSTREAM_ERR_TIMEOUT, msg);
}

static void req_arm(upstream_req_t *r, enum phase phase) {
    r->phase = phase;
    uint64_t ms = phase == PHASE_CONNECT   ? r->opts.connect_timeout_ms
                  : phase == PHASE_HEADERS ? r->opts.header_timeout_ms
                                           : r->opts.idle_timeout_ms;
    if (ms)
        uv_timer_start(&r->timer, on_req_timer, ms, 0);
    else
        uv_timer_stop(&r->timer);
}

/* ---------------------------------------------------------------- connections */

static void on_conn_handle_closed(uv_handle_t *h) {
    upstream_conn_t *c = h->data;
    if (--c->handles_open > 0) return;
    if (c->rbuf) refbuf_release(c->rbuf);
    if (c->pbuf) refbuf_release(c->pbuf);
    tls_conn_free(c->tls);
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
    uv_timer_stop(&c->idle_timer);
}

static void conn_close(upstream_conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    pool_remove(c);
    /* At shutdown uv_walk may have closed a handle already. */
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->idle_timer))
        uv_close((uv_handle_t *)&c->idle_timer, on_conn_handle_closed);
}

static upstream_conn_t *conn_new(upstream_pool_t *pool, origin_t *origin) {
    upstream_conn_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->pool = pool;
    c->origin = origin;
    uv_tcp_init(pool->ctx->loop, &c->tcp);
    uv_timer_init(pool->ctx->loop, &c->idle_timer);
    c->tcp.data = c->idle_timer.data = c;
    c->handles_open = 2;
    return c;
}

static void on_pool_idle_timeout(uv_timer_t *t) {
    conn_close(t->data);
}

static void conn_pool_put(upstream_conn_t *c) {
    origin_t *o = c->origin;
    if (c->closing || o->n_idle >= POOL_MAX_IDLE_PER_ORIGIN || c->pool->ctx->shutting_down) {
        conn_close(c);
        return;
    }
    /* An idle connection keeps reading so a close by the peer is noticed at once; it has no
     * need for a read buffer until bytes arrive. A client write still holding the block
     * keeps its own reference: dropping ours now, not only when we are the last holder, is
     * what keeps an idle pooled connection from pinning 64 KiB (the last body bytes are
     * usually still on their way to the client when the response completes). */
    if (c->rbuf) {
        refbuf_release(c->rbuf);
        c->rbuf = NULL;
    }
    if (c->pbuf) {
        refbuf_release(c->pbuf);
        c->pbuf = NULL;
    }
    c->in_pool = 1;
    c->idle_prev = NULL;
    c->idle_next = o->idle;
    if (o->idle) o->idle->idle_prev = c;
    o->idle = c;
    o->n_idle++;
    c->pool->n_idle++;
    uv_timer_start(&c->idle_timer, on_pool_idle_timeout, POOL_IDLE_MS, 0);
}

/* Reuses *slot when nobody else holds it (the client write of its bytes finished); else a
 * fresh block, so bytes still queued to a client are never overwritten. */
static refbuf_t *read_buffer(refbuf_t **slot) {
    if (*slot && (*slot)->refs > 1) {
        refbuf_release(*slot);
        *slot = NULL;
    }
    if (!*slot) *slot = refbuf_new(UPSTREAM_READ_BUF);
    return *slot;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    upstream_conn_t *c = h->data;
    refbuf_t *b = read_buffer(&c->rbuf);
    buf->base = b ? b->data : NULL;
    buf->len = b ? b->cap : 0;
}

typedef struct tls_write {
    uv_write_t w;
    upstream_conn_t *conn;
    buf_t bytes;
} tls_write_t;

static void conn_io_failed(upstream_conn_t *c, const char *message);

static void on_tls_write_done(uv_write_t *uw, int status) {
    tls_write_t *w = (tls_write_t *)uw;
    upstream_conn_t *c = w->conn;
    buf_free(&w->bytes);
    free(w);
    if (status < 0 && !c->closing) conn_io_failed(c, uv_strerror(status));
}

/* Sends the ciphertext mbedTLS produced. */
static int conn_flush_tls(upstream_conn_t *c) {
    buf_t *out = tls_pending_out(c->tls);
    if (out->len == 0) return 0;
    tls_write_t *w = malloc(sizeof(*w));
    if (!w) return -1;
    w->conn = c;
    w->bytes = *out;
    memset(out, 0, sizeof(*out));
    uv_buf_t b = uv_buf_init(w->bytes.data, (unsigned)w->bytes.len);
    if (uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write_done) < 0) {
        buf_free(&w->bytes);
        free(w);
        return -1;
    }
    return 0;
}

static int retry_on_fresh_connection(upstream_req_t *r) {
    /* A pooled connection the peer closed meanwhile: not the upstream's fault. */
    if (r->retried || r->got_byte || !r->conn || r->conn->uses <= 1) return 0;
    r->retried = 1;
    req_detach_conn(r, 1);
    r->next_addr = NULL;
    req_arm(r, PHASE_CONNECT);
    req_start_connect(r);
    return 1;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    upstream_conn_t *c = s->data;
    upstream_req_t *r = c->req;
    if (!r) {
        conn_close(c); /* idle: the peer closed, or sent bytes nobody asked for */
        return;
    }
    if (nread == 0) return;
    if (nread < 0) {
        if (nread == UV_EOF && r->got_byte && llhttp_message_needs_eof(&c->parser)) {
            r->ops++;
            llhttp_finish(&c->parser); /* completes a close-delimited body */
            r->ops--;
            if (r->message_done) {
                req_complete(r, 0);
                return;
            }
        }
        if (retry_on_fresh_connection(r)) return;
        req_fail(r, UPSTREAM_ERR_CLOSED,
                 nread == UV_EOF ? "upstream closed the connection" : "upstream connection error");
        return;
    }
    if (!c->tls) {
        conn_parse(c, r, buf->base, (size_t)nread, c->rbuf);
        return;
    }
    if (tls_feed(c->tls, buf->base, (size_t)nread) != 0) {
        req_fail(r, UPSTREAM_ERR_TLS, "out of memory");
        return;
    }
    char err[300];
    if (!c->tls_ready) {
        int hs = tls_handshake(c->tls, err, sizeof(err));
        if (hs < 0 || conn_flush_tls(c) != 0) {
            req_fail(r, UPSTREAM_ERR_TLS, hs < 0 ? err : "TLS write failed");
            return;
        }
        if (hs == 0) return;
        c->tls_ready = 1;
        req_send(r);
        return;
    }
    for (;;) {
        refbuf_t *plain = read_buffer(&c->pbuf);
        if (!plain) {
            req_fail(r, UPSTREAM_ERR_TLS, "out of memory");
            return;
        }
        ssize_t n = tls_read(c->tls, plain->data, plain->cap, err, sizeof(err));
        if (n == 0) return;
        if (n < 0) {
            conn_on_read(s, n == -1 ? UV_EOF : UV_EPROTO, NULL);
            return;
        }
        /* The parse may complete or cancel r, or hand c to the pool. */
        if (!conn_parse(c, r, plain->data, (size_t)n, plain) || c->req != r) return;
    }
}

/* Feeds response bytes (in ref) to the parser. Returns 1 while r goes on on this conn. */
static int conn_parse(upstream_conn_t *c, upstream_req_t *r, const char *data, size_t len,
                      refbuf_t *ref) {
    r->got_byte = 1;
    if (r->phase == PHASE_BODY && !r->paused) req_arm(r, PHASE_BODY);
    c->cur_ref = ref;
    r->ops++; /* callbacks below may cancel r */
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    r->ops--;
    if (r->finished) {
        req_maybe_free(r);
        return 0;
    }
    if (r->message_done) {
        int leftover = err == HPE_PAUSED && llhttp_get_error_pos(&c->parser) < data + len;
        req_complete(r, !leftover && llhttp_should_keep_alive(&c->parser));
        return 0;
    }
    if (err != HPE_OK) {
        char msg[160];
        snprintf(msg, sizeof(msg), "bad response from upstream: %s",
                 llhttp_get_error_reason(&c->parser));
        req_fail(r, UPSTREAM_ERR_PROTOCOL, msg);
        return 0;
    }
    return 1;
}

/* A write to the socket failed. */
static void conn_io_failed(upstream_conn_t *c, const char *message) {
    upstream_req_t *r = c->req;
    if (!r) {
        conn_close(c);
        return;
    }
    if (!r->got_byte && retry_on_fresh_connection(r)) return;
    char msg[160];
    snprintf(msg, sizeof(msg), "sending the request failed: %s", message);
    req_fail(r, UPSTREAM_ERR_CONNECT, msg);
}

/* ---------------------------------------------------------------- response parsing */

static int on_message_begin(llhttp_t *p) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    r->n_headers = 0;
    r->headers_cap = 0;
    r->hname.len = r->hval.len = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    if (r->hname.len + len > HTTP_MAX_HEADER_BYTES) return -1;
    return buf_append(&r->hname, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    if (r->hval.len + len > HTTP_MAX_HEADER_BYTES) return -1;
    return buf_append(&r->hval, at, len);
}

static int on_header_value_complete(llhttp_t *p) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    if (r->n_headers >= 256) return -1;
    if (r->n_headers == r->headers_cap) {
        size_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
        route_header_t *h = arena_alloc(&r->arena, cap * sizeof(*h));
        if (!h) return -1;
        if (r->n_headers) memcpy(h, r->headers, r->n_headers * sizeof(*h));
        r->headers = h;
        r->headers_cap = cap;
    }
    route_header_t *h = &r->headers[r->n_headers++];
    h->name = arena_strndup(&r->arena, r->hname.data ? r->hname.data : "", r->hname.len);
    h->value = arena_strndup(&r->arena, r->hval.data ? r->hval.data : "", r->hval.len);
    if (!h->name || !h->value) return -1;
    h->name_len = r->hname.len;
    h->value_len = r->hval.len;
    while (h->value_len &&
           (h->value[h->value_len - 1] == ' ' || h->value[h->value_len - 1] == '\t'))
        h->value[--h->value_len] = '\0';
    for (size_t i = 0; i < h->name_len; i++)
        if (h->name[i] >= 'A' && h->name[i] <= 'Z') h->name[i] += 'a' - 'A';
    r->hname.len = r->hval.len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    int status = p->status_code;
    if (status >= 100 && status < 200 && status != 101) {
        r->informational = 1; /* 100 Continue and friends: wait for the real head */
        return 0;
    }
    int64_t cl = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    req_arm(r, PHASE_BODY);
    r->cb.on_head(r->ud, status, r->headers, r->n_headers, cl);
    if (r->finished) return -1;
    return r->opts.head_request ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    upstream_conn_t *c = p->data;
    upstream_req_t *r = c->req;
    r->cb.on_body(r->ud, at, len, c->cur_ref);
    return r->finished ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
    upstream_req_t *r = ((upstream_conn_t *)p->data)->req;
    if (r->informational) {
        r->informational = 0;
        return 0;
    }
    r->message_done = 1;
    return HPE_PAUSED;
}

/* ---------------------------------------------------------------- connect and send */

static void on_write_done(uv_write_t *w, int status) {
    upstream_req_t *r = w->data;
    r->ops--;
    r->writing = 0;
    /* Cancelled by our own uv_close: whoever closed has dealt with the request. */
    if (r->finished || status == UV_ECANCELED) {
        req_maybe_free(r);
        return;
    }
    if (status < 0 && !r->got_byte) {
        if (retry_on_fresh_connection(r)) return;
        char msg[128];
        snprintf(msg, sizeof(msg), "sending the request failed: %s", uv_strerror(status));
        req_fail(r, UPSTREAM_ERR_CONNECT, msg);
    }
}

static void req_send(upstream_req_t *r) {
    upstream_conn_t *c = r->conn;
    c->uses++;
    llhttp_init(&c->parser, HTTP_RESPONSE, &r->pool->settings);
    c->parser.data = c;
    r->got_byte = r->message_done = r->informational = 0;
    req_arm(r, PHASE_HEADERS);
    if (c->tls) {
        /* Encrypting copies anyway; the request goes out as one ciphertext write. */
        if (tls_write(c->tls, r->head.data, r->head.len) != 0 ||
            (r->opts.body_len && tls_write(c->tls, r->opts.body, r->opts.body_len) != 0) ||
            conn_flush_tls(c) != 0) {
            r->deferred_kind = UPSTREAM_ERR_TLS;
            r->deferred_msg = "TLS write failed";
            uv_timer_start(&r->timer, on_req_timer, 0, 0);
        }
        uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read); /* if paused */
        return;
    }
    uv_buf_t bufs[2];
    unsigned n = 0;
    bufs[n++] = uv_buf_init(r->head.data, (unsigned)r->head.len);
    if (r->opts.body_len) bufs[n++] = uv_buf_init((char *)r->opts.body, (unsigned)r->opts.body_len);
    r->write_req.data = r;
    int rc = uv_write(&r->write_req, (uv_stream_t *)&c->tcp, bufs, n, on_write_done);
    r->writing = rc == 0;
    if (rc < 0) {
        r->deferred_kind = UPSTREAM_ERR_CONNECT;
        r->deferred_msg = "sending the request failed";
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
        return;
    }
    r->ops++;
    uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read); /* pooled: reading */
}

static void try_next_address(upstream_req_t *r, const char *last_error);

static void on_connect(uv_connect_t *cr, int status) {
    upstream_req_t *r = cr->data;
    r->ops--;
    if (r->finished) {
        req_maybe_free(r);
        return;
    }
    if (status < 0) {
        try_next_address(r, uv_strerror(status));
        return;
    }
    upstream_conn_t *c = r->conn;
    uv_tcp_nodelay(&c->tcp, 1);
    if (!r->opts.url->tls) {
        req_send(r);
        return;
    }
    tls_config_t *cfg = r->pool->ctx->tls_client;
    c->tls = cfg ? tls_conn_new(cfg, r->opts.url->host, &r->origin->resume) : NULL;
    if (!c->tls) {
        req_fail(r, UPSTREAM_ERR_TLS, cfg ? "TLS set-up failed" : "no CA certificates loaded");
        return;
    }
    char err[300];
    if (tls_handshake(c->tls, err, sizeof(err)) < 0 || conn_flush_tls(c) != 0) {
        req_fail(r, UPSTREAM_ERR_TLS, "TLS handshake could not start");
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
}

static void try_next_address(upstream_req_t *r, const char *last_error) {
    req_detach_conn(r, 1);
    struct addrinfo *ai = r->next_addr;
    while (ai && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    if (!ai) {
        char msg[160];
        snprintf(msg, sizeof(msg), "connect to %s:%d failed: %s", r->opts.url->host,
                 r->opts.url->port, last_error ? last_error : "no address");
        req_fail(r, UPSTREAM_ERR_CONNECT, msg);
        return;
    }
    r->next_addr = ai->ai_next;
    upstream_conn_t *c = conn_new(r->pool, r->origin);
    if (!c) {
        req_fail(r, UPSTREAM_ERR_CONNECT, "out of memory");
        return;
    }
    r->conn = c;
    c->req = r;
    r->connect_req.data = r;
    int rc = uv_tcp_connect(&r->connect_req, &c->tcp, ai->ai_addr, on_connect);
    if (rc < 0) {
        try_next_address(r, uv_strerror(rc));
        return;
    }
    r->ops++;
}

static void on_dns(uv_getaddrinfo_t *q, int status, struct addrinfo *res) {
    upstream_req_t *r = q->data;
    r->ops--;
    r->dns_pending = 0;
    if (r->finished) {
        if (res) uv_freeaddrinfo(res);
        req_maybe_free(r);
        return;
    }
    if (status < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "DNS lookup of %s failed: %s", r->opts.url->host,
                 uv_strerror(status));
        req_fail(r, UPSTREAM_ERR_DNS, msg);
        return;
    }
    if (r->addrs) uv_freeaddrinfo(r->addrs);
    r->addrs = res;
    r->next_addr = res;
    try_next_address(r, NULL);
}

static void req_start_connect(upstream_req_t *r) {
    if (r->addrs) { /* a retry: the name is resolved already */
        r->next_addr = r->addrs;
        try_next_address(r, NULL);
        return;
    }
    char port[8];
    snprintf(port, sizeof(port), "%d", r->opts.url->port);
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    r->dns.data = r;
    int rc = uv_getaddrinfo(r->pool->ctx->loop, &r->dns, on_dns, r->opts.url->host, port, &hints);
    if (rc < 0) {
        r->deferred_kind = UPSTREAM_ERR_DNS;
        r->deferred_msg = "DNS lookup could not start";
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
        return;
    }
    r->ops++;
    r->dns_pending = 1;
}

/* ---------------------------------------------------------------- public */

static origin_t *origin_get(upstream_pool_t *pool, const upstream_url_t *url) {
    char key[320];
    snprintf(key, sizeof(key), "%s|%s|%d", url->tls ? "https" : "http", url->host, url->port);
    for (origin_t *o = pool->origins; o; o = o->next)
        if (strcmp(o->key, key) == 0) return o;
    origin_t *o = calloc(1, sizeof(*o));
    if (!o || !(o->key = strdup(key))) {
        free(o);
        return NULL;
    }
    o->next = pool->origins;
    pool->origins = o;
    return o;
}

upstream_req_t *upstream_request(upstream_pool_t *pool, const upstream_request_opts_t *opts,
                                 const upstream_callbacks_t *cb, void *ud) {
    upstream_req_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->pool = pool;
    r->opts = *opts;
    r->cb = *cb;
    r->ud = ud;
    arena_init(&r->arena);
    uv_timer_init(pool->ctx->loop, &r->timer);
    r->timer.data = r;
    r->ops = 1; /* the timer handle, released when it closes */
    r->origin = origin_get(pool, opts->url);
    buf_printf(&r->head, "%s %s HTTP/1.1\r\n", opts->method, opts->target);
    buf_append(&r->head, opts->headers, opts->headers_len);
    buf_appends(&r->head, "\r\n");
    if (!r->origin || !r->head.data) {
        r->deferred_kind = UPSTREAM_ERR_CONNECT;
        r->deferred_msg = "out of memory";
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
        return r;
    }
    upstream_conn_t *c = r->origin->idle;
    if (c) {
        pool_remove(c);
        r->conn = c;
        c->req = r;
        req_send(r);
        return r;
    }
    req_arm(r, PHASE_CONNECT);
    req_start_connect(r);
    return r;
}

void upstream_cancel(upstream_req_t *r) {
    if (!r || r->finished) return;
    req_detach_conn(r, 1);
    if (r->dns_pending) uv_cancel((uv_req_t *)&r->dns); /* its callback still comes */
    req_finish(r);
}

void upstream_pause(upstream_req_t *r) {
    if (r->finished || r->paused || !r->conn) return;
    r->paused = 1;
    uv_read_stop((uv_stream_t *)&r->conn->tcp);
    uv_timer_stop(&r->timer); /* a slow client is not an idle upstream */
}

void upstream_resume(upstream_req_t *r) {
    if (r->finished || !r->paused || !r->conn) return;
    r->paused = 0;
    uv_read_start((uv_stream_t *)&r->conn->tcp, conn_on_alloc, conn_on_read);
    req_arm(r, r->phase);
}

upstream_pool_t *upstream_pool_new(route_ctx_t *ctx) {
    upstream_pool_t *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->ctx = ctx;
    llhttp_settings_init(&pool->settings);
    pool->settings.on_message_begin = on_message_begin;
    pool->settings.on_header_field = on_header_field;
    pool->settings.on_header_value = on_header_value;
    pool->settings.on_header_value_complete = on_header_value_complete;
    pool->settings.on_headers_complete = on_headers_complete;
    pool->settings.on_body = on_body;
    pool->settings.on_message_complete = on_message_complete;
    return pool;
}

size_t upstream_pool_idle(const upstream_pool_t *pool) {
    return pool->n_idle;
}

void upstream_pool_close_idle(upstream_pool_t *pool) {
    for (origin_t *o = pool->origins; o; o = o->next)
        while (o->idle)
            conn_close(o->idle);
}

void upstream_pool_free(upstream_pool_t *pool) {
    if (!pool) return;
    upstream_pool_close_idle(pool);
    origin_t *o = pool->origins;
    while (o) {
        origin_t *next = o->next;
        tls_resume_free(o->resume);
        free(o->key);
        free(o);
        o = next;
    }
    free(pool);
}

/* ---------------------------------------------------------------- fire-and-forget POST */

typedef struct webhook {
    arena_t arena;
    upstream_url_t url;
    char *label; /* scheme://host/path, never the query: webhook URLs carry secrets there */
    int status;
} webhook_t;

static void webhook_free(webhook_t *w) {
    arena_free(&w->arena);
    free(w);
}

static void on_webhook_head(void *ud, int status, const route_header_t *h, size_t n, int64_t cl) {
    ((webhook_t *)ud)->status = status;
}

static void on_webhook_body(void *ud, const char *data, size_t len, refbuf_t *ref) {}

static void on_webhook_done(void *ud) {
    webhook_t *w = ud;
    route_log(w->status >= 300 ? LOG_WARN : LOG_DEBUG, "webhook %s answered %d", w->label,
              w->status);
    webhook_free(w);
}

static void on_webhook_error(void *ud, int kind, const char *message) {
    webhook_t *w = ud;
    route_log(LOG_WARN, "webhook %s failed: %s", w->label, message);
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
    webhook_t *w = calloc(1, sizeof(*w));
    if (!w) {
        *why = "out of memory";
        return -1;
    }
    arena_init(&w->arena);
    if (upstream_parse_url(&w->arena, url, &w->url, why) != 0) {
        webhook_free(w);
        return -1;
    }
    /* Host only: webhook URLs carry their token in the path (Feishu) or the query. */
    w->label =
        arena_printf(&w->arena, "%s://%s", w->url.tls ? "https" : "http", w->url.host_header);
    const char *q = strchr(url + (w->url.tls ? 8 : 7), '?');
    char *target =
        arena_printf(&w->arena, "%s%s", *w->url.base_path ? w->url.base_path : "/", q ? q : "");
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
