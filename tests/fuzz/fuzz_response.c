/* fuzz_response.c: libFuzzer target for the upstream side (http1_client.c): the status line,
 * headers, 1xx heads, de-chunking, Content-Length and close-delimited bodies, and what the
 * proxy does with the body: SSE framing and extraction (sse.c through extract.c).
 *
 * Real upstream requests (upstream_request, through the pool) go to a listener of this
 * process on 127.0.0.1, which reads and drops them; the response bytes reach the request's
 * connection through http1_client_on_read (upstream_internal.h), the call its stream makes
 * for what it reads, cut as the input says. Two modes, by bit 2 of byte 0:
 *   raw: the input is the response. Fed whole and fed in pieces, the outcome is the same
 *     (status, headers, body bytes, done or the error kind); a completed body has the length
 *     Content-Length gave; header names are lower-case;
 *   framed: the input is a body, which this target frames (chunked in sizes the input picks,
 *     Content-Length, or close-delimited) under an SSE or JSON content type: the request must
 *     complete with exactly that body, and the extraction from it must equal an extraction of
 *     the body fed at once.
 * Byte 0: bit 0 a HEAD request, bit 1 the upstream closes after the bytes, bit 2 framed;
 * byte 1: the piece size (0: all at once). Framed: byte 2 picks the framing and content type,
 * byte 3 the chunk sizes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "route/extract.h"
#include "upstream_internal.h"

typedef struct outcome {
    int status, heads, done, err_kind;
    size_t n_headers;
    int64_t content_length;
    buf_t body;
    extract_t *ex;
} outcome_t;

typedef struct fuzz {
    uv_loop_t loop;
    route_ctx_t ctx;
    route_options_t opts;
    upstream_pool_t *pool;
    uv_tcp_t listener;
    arena_t arena;
    upstream_url_t url;
} fuzz_t;

static fuzz_t F;

/* ---------------------------------------------------------------- the upstream's end */

static void on_peer_closed(uv_handle_t *h) {
    free(h);
}

static void peer_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    static char scratch[64 * 1024];
    *b = uv_buf_init(scratch, sizeof scratch);
}

/* The client closed (its FIN): a reset back ends its socket at once, where a FIN would leave
 * it in TIME_WAIT, a port held for a minute per exchange (tens of thousands on a long run). */
static void peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    if (n >= 0) return;
    uv_os_fd_t fd;
    struct linger lg = {1, 0};
    if (uv_fileno((uv_handle_t *)s, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    uv_close((uv_handle_t *)s, on_peer_closed);
}

static void on_peer(uv_stream_t *listener, int status) {
    if (status < 0) abort();
    uv_tcp_t *peer = malloc(sizeof *peer);
    if (!peer) abort();
    uv_tcp_init(&F.loop, peer);
    if (uv_accept(listener, (uv_stream_t *)peer) != 0) abort();
    uv_read_start((uv_stream_t *)peer, peer_alloc, peer_read);
}

/* ---------------------------------------------------------------- the request's events */

static int is_lower_token(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c)))
            return 0;
    }
    return n > 0;
}

static void on_head(void *ud, int status, const route_header_t *h, size_t n, int64_t cl) {
    outcome_t *o = ud;
    if (o->heads++ || o->done || o->err_kind) abort(); /* one head, before the end */
    if (status < 0 || status > 999 || (status >= 100 && status < 200 && status != 101)) abort();
    o->status = status;
    o->n_headers = n;
    o->content_length = cl;
    const char *ct = NULL;
    size_t ct_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_lower_token(h[i].name, h[i].name_len) || strlen(h[i].name) != h[i].name_len) {
            fprintf(stderr, "bad name [%.*s]\n", (int)h[i].name_len, h[i].name);
            abort();
        }
        if (!h[i].value || h[i].value[h[i].value_len] != '\0') abort();
        if (!ct && strcmp(h[i].name, "content-type") == 0) {
            ct = h[i].value;
            ct_len = h[i].value_len;
        }
    }
    if (ct) o->ex = extract_new(ct, ct_len);
}

static void on_body(void *ud, const char *data, size_t len, refbuf_t *ref) {
    outcome_t *o = ud;
    if (!o->heads || o->done || o->err_kind || !len) {
        fprintf(stderr, "on_body heads %d done %d err %d len %zu status %d\n", o->heads, o->done,
                o->err_kind, len, o->status);
        abort();
    }
    if (ref && (data < ref->data || data + len > ref->data + ref->len)) abort();
    if (buf_append(&o->body, data, len) != 0) abort();
    if (o->ex) extract_feed(o->ex, data, len);
}

static void on_done(void *ud) {
    outcome_t *o = ud;
    if (!o->heads || o->done || o->err_kind) abort();
    o->done = 1;
}

static void on_error(void *ud, int kind, const char *message) {
    outcome_t *o = ud;
    if (o->done || o->err_kind || kind < UPSTREAM_ERR_DNS || kind > UPSTREAM_ERR_CLOSED) abort();
    if (!message || !*message) abort();
    o->err_kind = kind;
}

/* ---------------------------------------------------------------- one exchange */

static int ended(const outcome_t *o) {
    return o->done || o->err_kind;
}

/* Turns the loop until r has a connection that sent its request, or ended. */
static void wait_sent(upstream_req_t *r, outcome_t *o) {
    for (int i = 0; !ended(o) && !(r->conn && r->phase != PHASE_CONNECT); i++) {
        if (i > 100000) abort();
        uv_run(&F.loop, UV_RUN_ONCE);
    }
}

static void feed(upstream_req_t *r, outcome_t *o, const char *data, ssize_t n) {
    wait_sent(r, o);
    if (ended(o)) return;
    if (n <= 0) {
        http1_client_on_read(r->conn, n, NULL, NULL);
        return;
    }
    /* In a block as the stream's reads come, so a handler may keep it. */
    refbuf_t *ref = refbuf_new((size_t)n);
    if (!ref) abort();
    memcpy(ref->data, data, (size_t)n);
    ref->len = (size_t)n;
    http1_client_on_read(r->conn, n, ref->data, ref);
    refbuf_release(ref);
}

static void exchange(outcome_t *o, int head, int close_after, const char *bytes, size_t len,
                     size_t step) {
    memset(o, 0, sizeof *o);
    upstream_request_opts_t opts = {
        .url = &F.url,
        .method = head ? "HEAD" : "POST",
        .target = "/v1/chat/completions",
        .headers = head ? "Host: 127.0.0.1\r\n" : "Host: 127.0.0.1\r\nContent-Length: 2\r\n",
        .body = "{}",
        .body_len = head ? 0 : 2,
        .head_request = head,
        .connect_timeout_ms = 60000,
        .header_timeout_ms = 60000,
        .idle_timeout_ms = 60000,
    };
    opts.headers_len = strlen(opts.headers);
    static const upstream_callbacks_t cb = {
        .on_head = on_head, .on_body = on_body, .on_done = on_done, .on_error = on_error};
    upstream_req_t *r = upstream_request(F.pool, &opts, &cb, o);
    if (!r) abort();
    /* A pooled connection closed meanwhile makes the client retry on a fresh one: what was
     * fed then is fed again, so the exchange sees the same bytes. */
    for (int attempt = 0; attempt < 3 && !ended(o); attempt++) {
        wait_sent(r, o);
        if (ended(o)) break;
        upstream_conn_t *c = r->conn;
        for (size_t at = 0; at < len && !ended(o) && r->conn == c;) {
            size_t n = step && len - at > step ? step : len - at;
            feed(r, o, bytes + at, (ssize_t)n);
            at += n;
        }
        if (!ended(o) && r->conn == c && close_after) feed(r, o, NULL, UV_EOF);
        if (ended(o) || r->conn == c) break;
    }
    if (!ended(o)) upstream_cancel(r); /* the response never completed: as a client leaving */
    for (int i = 0; i < 4; i++)
        uv_run(&F.loop, UV_RUN_NOWAIT);
    if (o->done && !head && o->content_length >= 0 && o->status != 204 && o->status != 304 &&
        o->body.len != (size_t)o->content_length)
        abort();
    if (head && o->body.len) abort();
}

static void outcome_free(outcome_t *o) {
    buf_free(&o->body);
    extract_free(o->ex);
}

static int same(const outcome_t *a, const outcome_t *b) {
    return a->status == b->status && a->heads == b->heads && a->done == b->done &&
           a->err_kind == b->err_kind && a->n_headers == b->n_headers &&
           a->content_length == b->content_length && a->body.len == b->body.len &&
           (!a->body.len || memcmp(a->body.data, b->body.data, a->body.len) == 0);
}

/* The extraction results of two extractors (finished) are the same. */
static void same_extraction(extract_t *a, extract_t *b) {
    size_t na = 0, nb = 0;
    const char *ca = extract_content(a, &na), *cb = extract_content(b, &nb);
    if (!ca != !cb || na != nb || (ca && memcmp(ca, cb, na) != 0)) abort();
    if (ca && (na > EXTRACT_CONTENT_CAP || ca[na])) abort();
    const char *ma = extract_model(a), *mb = extract_model(b);
    if (!ma != !mb || (ma && strcmp(ma, mb) != 0)) abort();
    int64_t ua[3], ub[3];
    int ha = extract_usage(a, &ua[0], &ua[1], &ua[2]),
        hb = extract_usage(b, &ub[0], &ub[1], &ub[2]);
    if (ha != hb || (ha && memcmp(ua, ub, sizeof ua) != 0)) abort();
}

/* ---------------------------------------------------------------- libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    route_log_set_level(LOG_ERROR + 1);
    uv_loop_init(&F.loop);
    F.ctx.loop = &F.loop;
    F.opts.addr = "127.0.0.1:0";
    F.ctx.opts = &F.opts;
    F.pool = upstream_pool_new(&F.ctx);
    if (!F.pool) abort();
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&F.loop, &F.listener);
    if (uv_tcp_bind(&F.listener, (struct sockaddr *)&a, 0) != 0 ||
        uv_listen((uv_stream_t *)&F.listener, 128, on_peer) != 0)
        abort();
    int len = sizeof a;
    uv_tcp_getsockname(&F.listener, (struct sockaddr *)&a, &len);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", ntohs(a.sin_port));
    arena_init(&F.arena);
    const char *why;
    if (upstream_parse_url(&F.arena, url, &F.url, &why) != 0) abort();
    return 0;
}

static void run_raw(int head, int close_after, const char *s, size_t n, size_t step) {
    outcome_t whole, cut;
    exchange(&whole, head, close_after, s, n, 0);
    exchange(&cut, head, close_after, s, n, step ? step : 1);
    if (!same(&whole, &cut)) abort();
    outcome_free(&whole);
    outcome_free(&cut);
}

static void run_framed(int head, size_t step, const uint8_t *in, size_t n) {
    if (n < 2) return;
    unsigned how = in[0], sizes = in[1];
    const char *body = (const char *)in + 2;
    size_t blen = n - 2;
    const char *ct = how & 4 ? "application/json" : "text/event-stream; charset=utf-8";
    buf_t resp = {0};
    buf_printf(&resp, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n", ct);
    int framing = (how & 3) % 3, close_after = 0;
    if (framing == 0) { /* chunked, in sizes from 1 to 16 that the input picks */
        buf_appends(&resp, "Transfer-Encoding: chunked\r\n\r\n");
        for (size_t at = 0, k = 0; at < blen; k++) {
            size_t sz = ((sizes >> (k % 8)) & 0xf) + 1;
            if (sz > blen - at) sz = blen - at;
            buf_printf(&resp, "%zx\r\n", sz);
            buf_append(&resp, body + at, sz);
            buf_appends(&resp, "\r\n");
            at += sz;
        }
        buf_appends(&resp, "0\r\n\r\n");
    } else if (framing == 1) {
        buf_printf(&resp, "Content-Length: %zu\r\n\r\n", blen);
        buf_append(&resp, body, blen);
    } else {
        buf_appends(&resp, "Connection: close\r\n\r\n");
        buf_append(&resp, body, blen);
        close_after = 1;
    }
    if (!resp.data) abort();
    outcome_t o;
    exchange(&o, head, close_after, resp.data, resp.len, step);
    if (!o.done || o.status != 200) abort();
    if (!head && (o.body.len != blen || (blen && memcmp(o.body.data, body, blen) != 0))) abort();
    if (!head) {
        extract_t *ref = extract_new(ct, strlen(ct));
        if (!ref || !o.ex) abort();
        extract_feed(ref, body, blen);
        extract_finish(ref);
        extract_finish(o.ex);
        same_extraction(o.ex, ref);
        extract_free(ref);
    }
    outcome_free(&o);
    buf_free(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > 65536) return 0;
    unsigned flags = data[0];
    size_t step = data[1];
    if (step && (size - 2) / step > 4096) step = (size - 2) / 4096 + 1;
    if (flags & 4)
        run_framed(flags & 1, step, data + 2, size - 2);
    else
        run_raw(flags & 1, (flags >> 1) & 1, (const char *)data + 2, size - 2, step);
    return 0;
}
