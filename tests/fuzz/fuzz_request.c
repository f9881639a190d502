/* fuzz_request.c: libFuzzer target for the server side of HTTP/1 (http1_server.c): request
 * parsing, the limits, the request object, keep-alive and pipelining, response framing, and
 * the router in front of stub handlers (on every path; the router answers preflights).
 *
 * One real server (listener.c, a libuv loop, 127.0.0.1) serves one TCP connection per input;
 * the input's bytes reach the connection through http1_server_feed_for_fuzz (cut as the input
 * says, with loop turns between the pieces or not) rather than through the socket, and what
 * the server writes back is read from the client socket and parsed as responses. Checked:
 *   - every request a stub sees is well formed (method, path under '/', lower-case token
 *     header names, the body within the limit);
 *   - the responses on the wire are, in order, one per request the stubs answered (status as
 *     answered, no body after a HEAD; when the input ends with the client's close, the last
 *     ones may be missing: what was queued to it is dropped), then at most one more: the
 *     answer the server gave a request it refused (4xx/5xx), or the start of one a stub or
 *     the client's close cut off; nothing follows a response that does not keep the
 *     connection alive, and no request is handed to a stub after such a response; each
 *     response has the CORS line once and one framing header at most;
 *   - once the connection is gone every request was released (no active request left).
 *
 * Input: byte 0 is flags (bit 0: the client closes after the bytes; bit 1: a loop turn after
 * every piece), byte 1 the piece size (0: all at once), the rest the bytes, where 0xff k c
 * stands for k * 256 bytes c (k > 0; 0xff 0 is a 0xff), so the header and pending limits are
 * in reach. Stubs, by the last character of the path: 'a' answers from a later loop turn, 'c'
 * with a chunked body, 'b' with 300 KiB, 'h' with a 204, 'x' starts and aborts, 'e' answers
 * an error; else a JSON body. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_internal.h"
#include "route/router.h"
#include "route/server.h"

#define MAX_RECS     4096
#define MAX_EXPANDED (1u << 20)

enum outcome { PENDING, ANSWERED, STUB_ABORTED, CLIENT_GONE };

typedef struct rec {
    int status, head;
    enum outcome outcome;
} rec_t;

typedef struct fuzz {
    uv_loop_t loop;
    route_options_t opts;
    route_ctx_t ctx;
    router_t *router;
    struct sockaddr_in addr;
    rec_t recs[MAX_RECS];
    size_t n_recs;
    int closed_seen; /* a stub saw a request after a response that closed */
    size_t async_pending;
    buf_t wire;
} fuzz_t;

static fuzz_t F;

typedef struct later {
    uv_timer_t timer;
    http_request_t *req;
    size_t rec;
} later_t;

/* ---------------------------------------------------------------- stubs */

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c);
}

static void check_request(http_request_t *req) {
    const char *m = http_request_method(req), *path = http_request_path(req);
    if (!m || !*m || !path || path[0] != '/') abort();
    size_t n = http_request_header_count(req);
    for (size_t i = 0; i < n; i++) {
        const route_header_t *h = http_request_header_at(req, i);
        if (!h || !h->name_len || strlen(h->name) != h->name_len) abort();
        for (size_t k = 0; k < h->name_len; k++)
            if (!is_tchar((unsigned char)h->name[k])) abort();
        if (!h->value || memchr(h->value, '\n', h->value_len) || h->value[h->value_len]) abort();
        const route_header_t *first = http_request_header(req, h->name);
        if (!first || first > h) abort();
    }
    if (http_request_header_at(req, n)) abort();
    size_t blen;
    const char *body = http_request_body(req, &blen);
    if (!body || blen > HTTP_MAX_BODY_BYTES) abort();
    const char *q = http_request_query(req);
    if (q && strchr(path, '?')) abort();
    if (!http_request_client_connected(req)) abort();
}

static size_t rec_new(http_request_t *req, int status) {
    if (F.n_recs >= MAX_RECS) abort(); /* bounded by the input size */
    rec_t *r = &F.recs[F.n_recs];
    r->status = status;
    r->head = strcmp(http_request_method(req), "HEAD") == 0;
    r->outcome = PENDING;
    /* After a response that closed, nothing more may reach a handler. */
    for (size_t i = 0; i < F.n_recs; i++)
        if (F.recs[i].outcome != ANSWERED) F.closed_seen = 1;
    return F.n_recs++;
}

static void answer_json(http_request_t *req, int status) {
    size_t blen;
    http_request_body(req, &blen);
    char json[64];
    int n = snprintf(json, sizeof json, "{\"n\":%zu}\n", blen);
    http_respond_json(req, status, json, (size_t)n);
}

static void on_later_closed(uv_handle_t *h) {
    free(h->data);
    F.async_pending--;
}

static void on_later(uv_timer_t *t) {
    later_t *l = t->data;
    if (http_request_client_connected(l->req)) {
        F.recs[l->rec].outcome = ANSWERED;
        answer_json(l->req, 202);
    }
    http_request_release(l->req);
    uv_close((uv_handle_t *)&l->timer, on_later_closed);
}

static void on_client_gone(http_request_t *req) {
    later_t *l = http_request_handler_data(req);
    F.recs[l->rec].outcome = CLIENT_GONE;
}

static void stub(http_request_t *req) {
    check_request(req);
    const char *path = http_request_path(req);
    char last = path[strlen(path) - 1];
    static const char ct[] = "Content-Type: text/plain\r\n";
    size_t r;
    /* Each case marks its outcome before the call that ends the response: ending it goes on
     * to parse and dispatch the pipelined request after it, from inside this call. */
    switch (last) {
    case 'a': {
        r = rec_new(req, 202);
        later_t *l = calloc(1, sizeof *l);
        if (!l) abort();
        l->req = req;
        l->rec = r;
        l->timer.data = l;
        http_request_retain(req);
        http_request_set_handler(req, l, on_client_gone, NULL);
        uv_timer_init(&F.loop, &l->timer);
        uv_timer_start(&l->timer, on_later, 0, 0);
        F.async_pending++;
        return;
    }
    case 'c':
        r = rec_new(req, 200);
        if (http_response_start(req, 200, ct, sizeof ct - 1, -1) == 0) {
            http_response_write(req, "chunk one,", 10, NULL);
            http_response_write(req, "", 0, NULL);
            http_response_write(req, "chunk two", 9, NULL);
        }
        F.recs[r].outcome = ANSWERED;
        http_response_end(req);
        break;
    case 'b': {
        r = rec_new(req, 200);
        static char block[75 * 1024];
        if (!block[0]) memset(block, 'b', sizeof block);
        if (http_response_start(req, 200, ct, sizeof ct - 1, 4 * (int64_t)sizeof block) == 0)
            for (int i = 0; i < 4; i++)
                http_response_write(req, block, sizeof block, NULL);
        F.recs[r].outcome = ANSWERED;
        http_response_end(req);
        break;
    }
    case 'h':
        r = rec_new(req, 204);
        http_response_start(req, 204, NULL, 0, -1);
        F.recs[r].outcome = ANSWERED;
        http_response_end(req);
        break;
    case 'x':
        r = rec_new(req, 200);
        if (http_response_start(req, 200, ct, sizeof ct - 1, -1) == 0)
            http_response_write(req, "partial", 7, NULL);
        F.recs[r].outcome = STUB_ABORTED;
        http_response_abort(req);
        return;
    case 'e':
        r = rec_new(req, 409);
        F.recs[r].outcome = ANSWERED;
        http_respond_error(req, 409, "invalid_request_error", "stub error");
        break;
    default:
        r = rec_new(req, 200);
        F.recs[r].outcome = ANSWERED;
        answer_json(req, 200);
        break;
    }
}

/* ---------------------------------------------------------------- the client side */

typedef struct wire_parse {
    size_t n_final; /* complete non-1xx responses but the router's preflight answers */
    int preflight, last_closed, after_close, bad;
    char name[64]; /* the header name being read (longer ones are none of those counted) */
    size_t name_len;
    int allow_origin, content_length, transfer_encoding; /* per response */
} wire_parse_t;

static int w_header_field(llhttp_t *p, const char *at, size_t len) {
    wire_parse_t *w = p->data;
    for (size_t i = 0; i < len && w->name_len < sizeof w->name; i++)
        w->name[w->name_len++] = (char)(at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]);
    return 0;
}

static int w_header_value_complete(llhttp_t *p) {
    wire_parse_t *w = p->data;
#define NAME_IS(lit) (w->name_len == sizeof(lit) - 1 && memcmp(w->name, lit, w->name_len) == 0)
    w->allow_origin += NAME_IS("access-control-allow-origin");
    w->content_length += NAME_IS("content-length");
    w->transfer_encoding += NAME_IS("transfer-encoding");
#undef NAME_IS
    w->name_len = 0;
    return 0;
}

static int w_headers_complete(llhttp_t *p) {
    wire_parse_t *w = p->data;
    if (p->status_code >= 100 && p->status_code < 200) return 0;
    /* One CORS policy line each, one framing header at most (none for a 204). */
    if (w->allow_origin != 1 || w->content_length + w->transfer_encoding > 1) w->bad = 1;
    if (p->status_code == 204 && w->content_length + w->transfer_encoding) w->bad = 1;
    /* The router answers OPTIONS itself, with an empty 200, which no stub sends. */
    w->preflight = p->status_code == 200 && (p->flags & F_CONTENT_LENGTH) && !p->content_length;
    if (w->preflight) return 0;
    if (w->n_final < F.n_recs && F.recs[w->n_final].head) return 1;
    return 0;
}

static int w_message_begin(llhttp_t *p) {
    wire_parse_t *w = p->data;
    if (w->last_closed) w->after_close = 1;
    w->allow_origin = w->content_length = w->transfer_encoding = 0;
    w->name_len = 0;
    return 0;
}

static int w_message_complete(llhttp_t *p) {
    wire_parse_t *w = p->data;
    int st = p->status_code;
    if (st >= 100 && st < 200) return 0;
    if (!llhttp_should_keep_alive(p)) w->last_closed = 1;
    if (w->preflight) return 0;
    size_t m = w->n_final++;
    if (m < F.n_recs) {
        if (st != F.recs[m].status) w->bad = 1;
    } else if (st < 400 || st > 599) {
        w->bad = 1; /* the server's own answer is a refusal */
    }
    return 0;
}

/* client_closed: the input ended with the client's close, which drops what was still queued
 * to it, so the last responses answered may be missing (never any but the last ones). */
static void check_wire(int client_closed) {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = w_message_begin;
    s.on_header_field = w_header_field;
    s.on_header_value_complete = w_header_value_complete;
    s.on_headers_complete = w_headers_complete;
    s.on_message_complete = w_message_complete;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    wire_parse_t w = {0};
    p.data = &w;
    llhttp_errno_t err = llhttp_execute(&p, F.wire.data ? F.wire.data : "", F.wire.len);
    int complete = err == HPE_OK && llhttp_finish(&p) == HPE_OK;
    if (w.bad || w.after_close) abort();

    size_t answered = 0;
    while (answered < F.n_recs && F.recs[answered].outcome == ANSWERED)
        answered++;
    /* Only the last request may be unanswered: nothing is dispatched after it. */
    if (F.n_recs - answered > 1 || F.closed_seen) abort();
    int last_cut = answered < F.n_recs; /* aborted by the stub or the client's close */
    if (w.n_final < answered && !client_closed) abort();
    if (w.n_final > answered + 1) abort();
    if (w.n_final == answered + 1 && last_cut && F.recs[answered].outcome != STUB_ABORTED) abort();
    /* A response cut off may be left incomplete on the wire; nothing else may be. */
    if (!complete && !last_cut && !client_closed) abort();
}

static size_t drain(int fd, int *eof) {
    size_t got = 0;
    static char tmp[64 * 1024];
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n > 0) {
            if (buf_append(&F.wire, tmp, (size_t)n) != 0) abort();
            got += (size_t)n;
            continue;
        }
        if (n == 0) *eof = 1;
        if (n < 0 && errno == EINTR) continue;
        return got;
    }
}

/* Loop turns until nothing moves: writes flushed, later answers given. Bytes still queued
 * wait for the socket (a loaded machine may take a while to make it writable again). */
static void settle(int fd, int *eof) {
    for (int quiet = 0; quiet < 2;) {
        size_t got = drain(fd, eof);
        uv_run(&F.loop, UV_RUN_NOWAIT);
        size_t queued = http1_server_queued_for_fuzz(F.ctx.server);
        if (!got && queued) {
            struct pollfd pfd = {fd, POLLIN, 0};
            poll(&pfd, 1, 10);
        }
        quiet = got == 0 && F.async_pending == 0 && queued == 0 ? quiet + 1 : 0;
    }
}

/* ---------------------------------------------------------------- libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    route_log_set_level(LOG_ERROR + 1); /* refusals are expected here, by the million */
    uv_loop_init(&F.loop);
    F.opts.addr = "127.0.0.1:0";
    F.ctx.loop = &F.loop;
    F.ctx.opts = &F.opts;
    F.router = router_new();
    /* Every path: so each response on the wire but the preflights' is a stub's. */
    if (!F.router || router_add(F.router, "", ROUTER_PREFIX, stub) != 0) abort();
    char err[256];
    if (server_start(&F.ctx, F.router, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }
    socklen_t len = sizeof F.addr;
    if (getsockname(F.ctx.server->listen_fd, (struct sockaddr *)&F.addr, &len) != 0) abort();
    return 0;
}

/* Writes the expansion to out when it is not NULL; returns its length either way. */
static size_t expand_into(const uint8_t *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n && o < MAX_EXPANDED; i++) {
        if (in[i] != 0xff || i + 1 >= n) {
            if (out) out[o] = (char)in[i];
            o++;
            continue;
        }
        size_t k = in[++i];
        if (k == 0) {
            if (out) out[o] = (char)0xff;
            o++;
            continue;
        }
        char c = i + 1 < n ? (char)in[++i] : 'a';
        size_t run = k * 256;
        if (run > MAX_EXPANDED - o) run = MAX_EXPANDED - o;
        if (out) memset(out + o, c, run);
        o += run;
    }
    return o;
}

/* A client socket connected to the server (not yet accepted), non-blocking. Ports running
 * out (other processes' TIME_WAIT sockets on a shared machine) are waited out: no finding. */
static int client_connect(void) {
    for (int attempt = 0;; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("fuzz_request: socket");
            abort();
        }
        if (connect(fd, (struct sockaddr *)&F.addr, sizeof F.addr) == 0) {
            fcntl(fd, F_SETFL, O_NONBLOCK);
            return fd;
        }
        int e = errno;
        close(fd);
        if ((e != EADDRNOTAVAIL && e != EAGAIN && e != EINTR) || attempt > 200) {
            fprintf(stderr, "fuzz_request: connect: %s\n", strerror(e));
            abort();
        }
        usleep(10000);
    }
}

static char *expand(const uint8_t *in, size_t n, size_t *out_len) {
    *out_len = expand_into(in, n, NULL);
    char *out = malloc(*out_len + 1);
    if (!out) abort();
    expand_into(in, n, out);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > 65536) return 0;
    unsigned flags = data[0], step = data[1];
    size_t len;
    char *bytes = expand(data + 2, size - 2, &len);
    F.n_recs = 0;
    F.closed_seen = 0;
    F.wire.len = 0;

    int fd = client_connect();
    server_t *srv = F.ctx.server;
    for (int i = 0; srv->n_conns == 0; i++) {
        if (i > 100000) abort();
        uv_run(&F.loop, UV_RUN_NOWAIT);
    }

    int eof = 0, turns = 0;
    /* At most 4096 pieces: an expanded input cut byte by byte would cost seconds. */
    if (step && len / step > 4096) step = (unsigned)(len / 4096 + 1);
    for (size_t at = 0; at < len;) {
        size_t n = step ? (len - at < step ? len - at : step) : len - at;
        if (http1_server_feed_for_fuzz(srv, bytes + at, (ssize_t)n) != 0) break;
        at += n;
        /* Loop turns cost syscalls: 64 of them show what turns between pieces can. */
        if ((flags & 2) && turns++ < 64) {
            drain(fd, &eof);
            uv_run(&F.loop, UV_RUN_NOWAIT);
        }
    }
    if (flags & 1) http1_server_feed_for_fuzz(srv, NULL, UV_EOF);
    settle(fd, &eof);

    /* The end of the connection: what is left (keep-alive) closes, then the client reads to
     * the end and resets its side, so no socket lingers in TIME_WAIT across millions of runs. */
    http1_close_all(srv);
    for (int i = 0; srv->n_conns || F.async_pending || !eof; i++) {
        if (i > 100000) abort();
        uv_run(&F.loop, UV_RUN_NOWAIT);
        drain(fd, &eof);
    }
    if (srv->active_requests != 0) abort();
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    check_wire(flags & 1);
    free(bytes);
    return 0;
}
