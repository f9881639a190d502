/* http1_client.c: one HTTP/1.1 exchange with an upstream.
 *
 * Owns: the request's life (exactly one of on_done/on_error, never from inside
 * upstream_request), writing the request (line, caller's headers and body in one write),
 * llhttp response parsing and de-chunking, 1xx heads, close-delimited bodies, the connect /
 * response-header / idle-body timeouts, backpressure (pause/resume), retrying once on a
 * fresh connection when a pooled one turns out closed before any response byte, and a 101
 * to an upgrade request (the connection and the bytes after the head go to the caller).
 * Must not: manage connections or DNS (upstream_pool.c), touch sockets or TLS (stream.c),
 * decide anything about failover, headers or records (proxy.c), or block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_internal.h"

static int conn_parse(upstream_conn_t *c, upstream_req_t *r, const char *data, size_t len,
                      refbuf_t *ref);

/* ---------------------------------------------------------------- request lifetime */

static void on_req_timer_closed(uv_handle_t *h) {
    upstream_req_t *r = h->data;
    r->ops--;
    upstream_req_recycle(r->pool, r);
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
    if (close_it) upstream_conn_close(c);
}

static void on_req_timer(uv_timer_t *t);

void http1_client_fail_later(upstream_req_t *r, int kind, const char *message) {
    if (r->finished) return;
    r->deferred_kind = kind;
    r->deferred_msg = message;
    uv_timer_start(&r->timer, on_req_timer, 0, 0);
}

void http1_client_fail(upstream_req_t *r, int kind, const char *message) {
    if (r->finished) return;
    req_detach_conn(r, 1);
    if (r->ops < 0) { /* inside upstream_request: the caller must hear it later */
        const char *copy = arena_strdup(&r->arena, message);
        r->deferred_kind = kind;
        r->deferred_msg = copy ? copy : "upstream request could not start";
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
        return;
    }
    req_finish(r);
    r->cb.on_error(r->ud, kind, message);
}

static void req_complete(upstream_req_t *r, int reuse_conn) {
    if (r->finished) return;
    upstream_conn_t *c = r->conn;
    req_detach_conn(r, 0);
    if (c) {
        /* The upstream answered before taking all of the body: the write still queued
         * points into the client's body, which on_done frees. Closing drops it. */
        if (reuse_conn && stream_pending(c->stream) == 0)
            upstream_conn_put(c);
        else
            upstream_conn_close(c);
    }
    req_finish(r);
    r->cb.on_done(r->ud);
}

/* A 101 to an upgrade request: the connection, and what the upstream sent after the head,
 * go to the caller, who now speaks the new protocol on it. Never pooled. */
static void req_switch(upstream_req_t *r, const char *early, size_t early_len, refbuf_t *ref) {
    upstream_conn_t *c = r->conn;
    req_detach_conn(r, 0);
    stream_t *s = upstream_conn_take_stream(c);
    req_finish(r); /* the headers (r->arena) live until the timer's close, a later iteration */
    r->cb.on_upgrade(r->ud, r->hh.items, r->hh.n, s, early, early_len, ref);
}

static void on_req_timer(uv_timer_t *t) {
    upstream_req_t *r = t->data;
    if (r->deferred_kind) {
        http1_client_fail(r, r->deferred_kind, r->deferred_msg);
        return;
    }
    if (!deadline_due(t, &r->deadline, on_req_timer)) return;
    char msg[96];
    const char *what = r->phase == PHASE_CONNECT   ? "connect"
                       : r->phase == PHASE_HEADERS ? "response headers"
                                                   : "idle (no body bytes)";
    uint64_t ms = r->phase == PHASE_CONNECT   ? r->opts.connect_timeout_ms
                  : r->phase == PHASE_HEADERS ? r->opts.header_timeout_ms
                                              : r->opts.idle_timeout_ms;
    snprintf(msg, sizeof(msg), "timeout: %s after %.3g s", what, (double)ms / 1000.0);
    http1_client_fail(r, UPSTREAM_ERR_TIMEOUT, msg);
}

static void req_arm(upstream_req_t *r, enum upstream_phase phase) {
    r->phase = phase;
    uint64_t ms = phase == PHASE_CONNECT   ? r->opts.connect_timeout_ms
                  : phase == PHASE_HEADERS ? r->opts.header_timeout_ms
                                           : r->opts.idle_timeout_ms;
    /* Waiting for headers, the timer wakes by the idle timeout at the latest: the body phase
     * that follows then needs no restart. */
    uint64_t wake = phase == PHASE_HEADERS ? r->opts.idle_timeout_ms : 0;
    deadline_set_early(&r->timer, &r->deadline, ms, wake, on_req_timer);
}

static int retry_on_fresh_connection(upstream_req_t *r) {
    /* A pooled connection the peer closed meanwhile: not the upstream's fault. */
    if (r->retried || r->got_byte || !r->conn || r->conn->uses <= 1) return 0;
    r->retried = 1;
    req_detach_conn(r, 1);
    r->next_addr = NULL;
    req_arm(r, PHASE_CONNECT);
    upstream_connect_start(r);
    return 1;
}

/* ---------------------------------------------------------------- sending */

void http1_client_connected(upstream_req_t *r) {
    upstream_conn_t *c = r->conn;
    c->uses++;
    if (r->connect_start_ns && r->opts.connect_ns)
        *r->opts.connect_ns = util_now_mono_ns() - r->connect_start_ns;
    r->connect_start_ns = 0;
    llhttp_init(&c->parser, HTTP_RESPONSE, &r->pool->settings);
    c->parser.data = c;
    r->got_byte = r->message_done = r->informational = 0;
    req_arm(r, PHASE_HEADERS);
    /* The head (built once, in the request's recycled buffer) and the body leave in one
     * writev, or one TLS flush. Both stay valid until the request ends, and ending it closes
     * a connection whose write is still queued. */
    uv_buf_t bufs[2];
    unsigned n = 0;
    bufs[n++] = uv_buf_init(r->head.data, (unsigned)r->head.len);
    if (r->opts.body_len) bufs[n++] = uv_buf_init((char *)r->opts.body, (unsigned)r->opts.body_len);
    if (stream_writev(c->stream, bufs, n, NULL, STREAM_STABLE) != 0) {
        if (retry_on_fresh_connection(r)) return;
        http1_client_fail_later(r, UPSTREAM_ERR_CONNECT, "sending the request failed");
        return;
    }
    stream_read_start(c->stream);
}

/* A write to the socket failed. */
void http1_client_on_write_error(upstream_conn_t *c, const char *message) {
    upstream_req_t *r = c->req;
    if (!r->got_byte && retry_on_fresh_connection(r)) return;
    char msg[160];
    snprintf(msg, sizeof(msg), "sending the request failed: %s", message);
    http1_client_fail(r, UPSTREAM_ERR_CONNECT, msg);
}

/* ---------------------------------------------------------------- receiving */

void http1_client_on_read(upstream_conn_t *c, ssize_t nread, const char *data, refbuf_t *ref) {
    upstream_req_t *r = c->req;
    if (nread > 0) {
        conn_parse(c, r, data, (size_t)nread, ref);
        return;
    }
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
    http1_client_fail(r, UPSTREAM_ERR_CLOSED,
                      nread == UV_EOF ? "upstream closed the connection"
                                      : "upstream connection error");
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
    c->cur_ref = NULL;
    if (r->finished) {
        upstream_req_recycle(r->pool, r);
        return 0;
    }
    if (r->switched) {
        const char *rest = err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE
                               ? llhttp_get_error_pos(&c->parser)
                               : data + len;
        req_switch(r, rest, (size_t)(data + len - rest), ref);
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
        http1_client_fail(r, UPSTREAM_ERR_PROTOCOL, msg);
        return 0;
    }
    return 1;
}

static upstream_req_t *parser_req(llhttp_t *p) {
    return ((upstream_conn_t *)p->data)->req;
}

static int on_message_begin(llhttp_t *p) {
    http_headers_reset(&parser_req(p)->hh);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    return http_headers_on_field(&parser_req(p)->hh, at, len) ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    return http_headers_on_value(&parser_req(p)->hh, at, len) ? -1 : 0;
}

static int on_header_value_complete(llhttp_t *p) {
    upstream_req_t *r = parser_req(p);
    return http_headers_on_complete(&r->hh, &r->arena) ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p) {
    upstream_req_t *r = parser_req(p);
    int status = p->status_code;
    if (status == 101 && r->opts.upgrade && r->cb.on_upgrade) {
        r->switched = 1; /* the rest is the new protocol: no body (llhttp stops, paused) */
        return 2;
    }
    if (status >= 100 && status < 200 && status != 101) {
        r->informational = 1; /* 100 Continue and friends: wait for the real head */
        return 1;             /* a 1xx has no body, whatever Content-Length it names */
    }
    int64_t cl = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    req_arm(r, PHASE_BODY);
    r->cb.on_head(r->ud, status, r->hh.items, r->hh.n, cl);
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
    upstream_req_t *r = parser_req(p);
    if (r->informational) {
        r->informational = 0;
        return 0;
    }
    r->message_done = 1;
    return HPE_PAUSED;
}

void http1_client_settings(llhttp_settings_t *s) {
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

/* ---------------------------------------------------------------- public */

upstream_req_t *upstream_request(upstream_pool_t *pool, const upstream_request_opts_t *opts,
                                 const upstream_callbacks_t *cb, void *ud) {
    upstream_req_t *r = upstream_req_alloc(pool);
    if (!r) return NULL;
    r->opts = *opts;
    r->cb = *cb;
    r->ud = ud;
    uv_timer_init(pool->ctx->loop, &r->timer);
    r->timer.data = r;
    r->origin = upstream_origin_get(pool, opts->url);
    int bad = !r->origin || buf_appends(&r->head, opts->method) != 0 ||
              buf_append(&r->head, " ", 1) != 0 || buf_appends(&r->head, opts->target) != 0 ||
              buf_append(&r->head, " HTTP/1.1\r\n", 11) != 0 ||
              buf_append(&r->head, opts->headers, opts->headers_len) != 0 ||
              buf_append(&r->head, "\r\n", 2) != 0;
    r->opts.headers = NULL; /* the caller's copy is not kept */
    r->opts.headers_len = 0;
    /* ops < 0 marks "inside this call": a failure now is reported from the next iteration.
     * It becomes 1 (the timer handle, released when it closes) on the way out. */
    r->ops = -1000;
    if (bad) {
        http1_client_fail_later(r, UPSTREAM_ERR_CONNECT,
                                r->origin ? "out of memory" : "too many upstream origins in use");
    } else if ((r->conn = upstream_conn_take_idle(r->origin))) {
        r->conn->req = r;
        http1_client_connected(r);
    } else {
        req_arm(r, PHASE_CONNECT);
        upstream_connect_start(r);
    }
    r->ops += 1001;
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
    stream_read_stop(r->conn->stream);
    r->deadline = 0; /* a slow client is not an idle upstream */
}

void upstream_resume(upstream_req_t *r) {
    if (r->finished || !r->paused || !r->conn) return;
    r->paused = 0;
    stream_read_start(r->conn->stream);
    req_arm(r, r->phase);
}
