/* http1_server.c: one HTTP/1 client connection and the requests on it.
 *
 * Owns: llhttp request parsing, the limits (header block, body, slow headers, body idle,
 * keep-alive idle), keep-alive and pipelining (one request handled at a time per connection,
 * later bytes held until its response ends), response framing (Content-Length, chunked or
 * close-delimited) with the head leaving in the same write as the first body bytes, the
 * request and connection objects (recycled up to a ceiling) and the request accessors,
 * handing complete requests to the router, and a protocol switch (the 101 head, then the
 * stream and the bytes after the request head handed to the handler).
 * Must not: know which handler answers which path (router.c), touch sockets or TLS directly
 * (stream.c), accept or refuse connections (listener.c), or block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_headers.h"
#include "http_internal.h"
#include "route/access_log.h"
#include "route/config.h"

#define SLOW_HEADERS_MS   (30 * 1000)
#define BODY_IDLE_MS      (60 * 1000)
#define KEEPALIVE_IDLE_MS (75 * 1000)
/* Pipelined bytes held while a request is handled; past this we stop reading. */
#define PENDING_CAP (256 * 1024)
/* After an answer given before the request ended (a 413 while the body still arrives, a 400,
 * a 431), the client is usually still sending: closing at once would reset the connection and
 * the client would never read the answer (RFC 9112 section 9.6). So the write side is shut
 * after the answer and what still arrives is read and dropped, for this long or this many
 * bytes at most, then the connection closes. */
#define LINGER_MS        (2 * 1000)
#define LINGER_MAX_BYTES ((size_t)64 << 20)
#define FREE_REQS_MAX    256
#define FREE_CONNS_MAX   64
/* Head buffer memory a connection keeps between responses. */
#define HEAD_KEEP (16 * 1024)

struct server_conn {
    server_t *srv;
    stream_t *stream;
    uv_timer_t timer;
    uint64_t deadline; /* loop ms (deadline_set), 0 while a request is answered */
    llhttp_t parser;
    server_conn_t *prev, *next;
    char client_ip[64];

    http_request_t *reading; /* being parsed */
    http_request_t *active;  /* being answered */
    http_headers_t hh;
    buf_t url;
    int error_status;          /* set by a callback that rejects the request */
    const char *error_message; /* its reason, static text (NULL: llhttp's) */
    int in_body;

    buf_t pending; /* bytes received but not parsed yet (pipelining) */
    size_t pending_off;
    int reading_stopped, processing, closing, shut_down;
    int peer_eof;     /* the client shut its write side: answer what it sent, then close */
    int discarding;   /* answered before the request ended: drop what still arrives */
    size_t discarded; /* bytes dropped so far */

    buf_t head; /* the active response's head, until it leaves with the first body bytes */
    int head_waiting, write_failed;
    int send_watch; /* the timer checks that the client takes the bytes queued to it */
    server_conn_t *head_prev, *head_next;
};

static void conn_close(server_conn_t *c);
static void conn_process(server_conn_t *c);
static void on_conn_timer(uv_timer_t *t);
static void conn_watch_send(server_conn_t *c);

/* Every deadline of a connection wakes its timer within SLOW_HEADERS_MS, the shortest: the
 * next request's header deadline then finds the timer due soon enough, and a connection
 * costs no timer restart per request (an idle one wakes twice or so before it is dropped). */
static void conn_deadline(server_conn_t *c, uint64_t ms) {
    deadline_set_early(&c->timer, &c->deadline, ms, SLOW_HEADERS_MS, on_conn_timer);
}

/* ---------------------------------------------------------------- requests */

static http_request_t *request_new(server_conn_t *c) {
    server_t *srv = c->srv;
    http_request_t *req = srv->free_reqs;
    if (req) {
        srv->free_reqs = req->next_free;
        srv->n_free_reqs--;
        buf_t body = req->body;
        memset(req, 0, sizeof(*req));
        body.len = 0;
        req->body = body;
    } else if (!(req = calloc(1, sizeof(*req)))) {
        return NULL;
    }
    arena_init_pooled(&req->arena, &srv->ctx->arena_pool);
    req->refs = 1;
    req->srv = srv;
    req->ctx = srv->ctx;
    return req;
}

void http_request_retain(http_request_t *req) {
    req->refs++;
}

void http_request_release(http_request_t *req) {
    if (--req->refs > 0) return;
    arena_free(&req->arena);
    server_t *srv = req->srv;
    /* The server outlives its requests except at exit, where nothing is recycled. */
    if (srv && !srv->ctx->shutting_down && srv->n_free_reqs < FREE_REQS_MAX) {
        if (req->body.cap > 64 * 1024) buf_free(&req->body);
        req->next_free = srv->free_reqs;
        srv->free_reqs = req;
        srv->n_free_reqs++;
        return;
    }
    buf_free(&req->body);
    free(req);
}

struct route_ctx *http_request_ctx(const http_request_t *req) {
    return req->ctx;
}
arena_t *http_request_arena(http_request_t *req) {
    return &req->arena;
}
const char *http_request_method(const http_request_t *req) {
    return req->method_name;
}
const char *http_request_path(const http_request_t *req) {
    return req->path;
}
const char *http_request_query(const http_request_t *req) {
    return req->query;
}
size_t http_request_header_count(const http_request_t *req) {
    return req->n_headers;
}
const route_header_t *http_request_header_at(const http_request_t *req, size_t i) {
    return i < req->n_headers ? &req->headers[i] : NULL;
}
const char *http_request_body(const http_request_t *req, size_t *len) {
    if (len) *len = req->body.len;
    return req->body.data ? req->body.data : "";
}
const char *http_request_client_ip(const http_request_t *req) {
    return req->client_ip;
}
int64_t http_request_start_mono_ns(const http_request_t *req) {
    return req->start_mono_ns;
}
int64_t http_request_start_wall_ns(const http_request_t *req) {
    return req->start_wall_ns;
}
int http_request_client_connected(const http_request_t *req) {
    return req->conn != NULL;
}
void http_request_set_handler(http_request_t *req, void *data, http_request_cb on_abort,
                              http_request_cb on_drain) {
    req->handler_data = data;
    req->on_abort = on_abort;
    req->on_drain = on_drain;
}
void *http_request_handler_data(const http_request_t *req) {
    return req->handler_data;
}
const char *http_request_abort_reason(const http_request_t *req) {
    return req->abort_reason ? req->abort_reason : "client disconnected";
}

const route_header_t *http_request_header(const http_request_t *req, const char *name) {
    return http_headers_find(req->headers, req->n_headers, name);
}

static const char *status_text(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* ---------------------------------------------------------------- writing */

static void head_list_remove(server_conn_t *c) {
    if (!c->head_waiting) return;
    c->head_waiting = 0;
    if (c->head_prev)
        c->head_prev->head_next = c->head_next;
    else
        c->srv->heads_waiting = c->head_next;
    if (c->head_next) c->head_next->head_prev = c->head_prev;
    c->head_prev = c->head_next = NULL;
}

/* The client is gone or unwritable. Closing here would abort the request under the handler
 * that is writing; the connection closes from the next loop iteration instead. */
static void conn_write_failed(server_conn_t *c) {
    head_list_remove(c);
    c->write_failed = 1;
    stream_read_stop(c->stream); /* nothing more is parsed or dispatched on it */
    uv_timer_start(&c->timer, on_conn_timer, 0, 0);
}

/* Writes bufs, after the waiting response head if there is one, as one write. */
static int conn_send(server_conn_t *c, const uv_buf_t *bufs, unsigned n, refbuf_t *ref) {
    if (c->closing || c->shut_down || c->write_failed) {
        head_list_remove(c);
        return -1;
    }
    uv_buf_t all[8];
    unsigned m = 0;
    if (c->head_waiting) {
        head_list_remove(c);
        all[m++] = uv_buf_init(c->head.data, (unsigned)c->head.len);
    }
    for (unsigned i = 0; i < n && m < 8; i++)
        all[m++] = bufs[i];
    /* The stream copies whatever the kernel does not take and is not in ref (the head,
     * chunk frames), so c->head is free again once this returns. */
    int rc = m ? stream_write(c->stream, all, m, ref) : 0;
    c->head.len = 0;
    if (c->head.cap > HEAD_KEEP) buf_free(&c->head);
    if (rc != 0)
        conn_write_failed(c);
    else
        conn_watch_send(c);
    return rc;
}

static void on_head_check(uv_check_t *h) {
    server_t *srv = h->data;
    while (srv->heads_waiting)
        conn_send(srv->heads_waiting, NULL, 0, NULL);
}

int http_response_start(http_request_t *req, int status, const char *headers, size_t headers_len,
                        int64_t content_length) {
    server_conn_t *c = req->conn;
    if (!c || req->response_started) return -1;
    req->response_started = 1;
    req->status = status;
    int no_body = req->method == HTTP_HEAD || status == 204 || status == 304 || status < 200;
    int http11 = req->http_major == 1 && req->http_minor >= 1;
    if (!req->keep_alive || req->ctx->shutting_down) req->response_close = 1;
    if (content_length < 0 && !no_body) {
        if (http11)
            req->response_chunked = 1;
        else
            req->response_close = 1;
    }
    buf_t *out = &c->head;
    out->len = 0;
    size_t policy_len;
    const char *policy = router_response_headers(c->srv->router, req, &policy_len);
    /* No printf: this runs for every response. */
    int rc = buf_append(out, http11 ? "HTTP/1.1 " : "HTTP/1.0 ", 9);
    rc |= buf_append_i64(out, status);
    rc |= buf_append(out, " ", 1);
    rc |= buf_appends(out, status_text(status));
    rc |= buf_append(out, "\r\n", 2);
    if (headers && headers_len) rc |= buf_append(out, headers, headers_len);
    if (policy_len) rc |= buf_append(out, policy, policy_len);
    if (req->response_chunked)
        rc |= buf_appends(out, "Transfer-Encoding: chunked\r\n");
    else if (content_length >= 0 && status != 204 && status >= 200) {
        rc |= buf_append(out, "Content-Length: ", 16);
        rc |= buf_append_i64(out, content_length);
        rc |= buf_append(out, "\r\n", 2);
    }
    if (req->response_close)
        rc |= buf_appends(out, "Connection: close\r\n");
    else if (!http11)
        rc |= buf_appends(out, "Connection: keep-alive\r\n");
    rc |= buf_appends(out, "\r\n");
    if (rc != 0) {
        out->len = 0;
        conn_write_failed(c);
        return -1;
    }
    server_t *srv = c->srv;
    c->head_waiting = 1;
    c->head_prev = NULL;
    c->head_next = srv->heads_waiting;
    if (srv->heads_waiting) srv->heads_waiting->head_prev = c;
    srv->heads_waiting = c;
    return 0;
}

int http_response_write(http_request_t *req, const char *data, size_t len, refbuf_t *ref) {
    server_conn_t *c = req->conn;
    if (!c || !req->response_started || req->response_done) return -1;
    if (len == 0 || req->method == HTTP_HEAD) return 0;
    uv_buf_t bufs[3];
    unsigned n = 0;
    char frame[24];
    if (req->response_chunked) {
        size_t fl = util_fmt_hex(frame, len);
        frame[fl++] = '\r';
        frame[fl++] = '\n';
        bufs[n++] = uv_buf_init(frame, (unsigned)fl);
    }
    bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
    if (req->response_chunked) bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    int rc = conn_send(c, bufs, n, ref);
    if (rc == 0) req->body_bytes_sent += len;
    return rc;
}

uint64_t http_response_bytes_sent(const http_request_t *req) {
    return req->body_bytes_sent;
}

void http_request_set_logs_itself(http_request_t *req) {
    req->logs_itself = 1;
}

size_t http_response_pending(const http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c) return 0;
    return stream_pending(c->stream) + (c->head_waiting ? c->head.len : 0);
}

/* Lets queued writes finish, then closes: closing at once would drop them. */
static void conn_shutdown(server_conn_t *c) {
    if (c->closing || c->shut_down) return;
    c->shut_down = 1;
    stream_shutdown(c->stream);
    conn_watch_send(c); /* the last bytes must be taken too, or the FIN never leaves */
}

/* The connection is done with its active request. */
static void conn_request_finished(server_conn_t *c, http_request_t *req, int close_after) {
    if (!req->logs_itself) access_log_http(c->srv->ctx->access_log, req, req->status);
    req->response_done = 1;
    c->active = NULL;
    c->srv->active_requests--;
    req->conn = NULL;
    http_request_release(req);
    if (close_after || c->srv->ctx->shutting_down) {
        c->send_watch = 0; /* conn_shutdown watches the rest */
        conn_shutdown(c);
        return;
    }
    /* What is still queued is bounded by the keep-alive idle time, or the next request's own
     * watch. */
    c->send_watch = 0;
    conn_process(c);
}

void http_response_end(http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c || req->response_done) return;
    if (!req->response_started) http_response_start(req, 200, NULL, 0, 0);
    static const char last[] = "0\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)last, sizeof(last) - 1);
    int terminate = req->response_chunked && req->method != HTTP_HEAD;
    if (terminate || c->head_waiting) conn_send(c, &b, terminate ? 1 : 0, NULL);
    conn_request_finished(c, req, req->response_close);
}

void http_response_abort(http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c || req->response_done) return;
    /* A head still waiting leaves first: the client sees the response begin, then the close
     * (no terminating chunk, or fewer bytes than Content-Length), and knows it is truncated. */
    if (c->head_waiting) conn_send(c, NULL, 0, NULL);
    conn_request_finished(c, req, 1);
}

static void respond_json_with(http_request_t *req, int status, const char *json, size_t len,
                              const char *extra, size_t extra_len) {
    static const char ct[] = "Content-Type: application/json; charset=utf-8\r\n";
    buf_t head = {0};
    buf_append(&head, ct, sizeof(ct) - 1);
    if (extra_len) buf_append(&head, extra, extra_len);
    if (head.data && http_response_start(req, status, head.data, head.len, (int64_t)len) == 0)
        http_response_write(req, json, len, NULL);
    buf_free(&head);
    http_response_end(req);
}

void http_respond_json(http_request_t *req, int status, const char *json, size_t len) {
    respond_json_with(req, status, json, len, NULL, 0);
}

void http_respond_error(http_request_t *req, int status, const char *type, const char *message) {
    http_respond_error_with(req, status, type, message, NULL, 0);
}

void http_respond_error_with(http_request_t *req, int status, const char *type, const char *message,
                             const char *headers, size_t headers_len) {
    buf_t b = {0};
    buf_appends(&b, "{\"error\":{\"message\":");
    buf_append_json_string(&b, message, strlen(message));
    buf_appends(&b, ",\"type\":");
    buf_append_json_string(&b, type, strlen(type));
    buf_appends(&b, "}}\n");
    if (b.data)
        respond_json_with(req, status, b.data, b.len, headers, headers_len);
    else
        http_response_abort(req);
    buf_free(&b);
}

static void dispatch(server_conn_t *c, http_request_t *req) {
    req->conn = c;
    c->active = req;
    c->srv->active_requests++;
    c->deadline = 0;
    router_dispatch(c->srv->router, req);
}

/* ---------------------------------------------------------------- parsing */

/* A request answered by closing: an HTTP/0.9 client could not read a status line. */
#define REJECT_CLOSE (-1)

static int reject(server_conn_t *c, int status) {
    c->error_status = status;
    return -1;
}

static int reject_why(server_conn_t *c, int status, const char *message) {
    c->error_message = message;
    return reject(c, status);
}

/* Hex digit value, or -1. */
static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* 1 when the path, read as an upstream or any intermediary might read it (percent-decoded
 * once, a backslash taken for a slash), has a "." or ".." segment. Such a path is refused
 * rather than normalized: no SDK sends one, and every normalization that differs from the
 * upstream's own is a way to reach a path outside /v1 with the upstream's key. */
static int path_has_dot_segment(const char *path) {
    size_t dots = 0, other = 0;
    for (const char *p = path;; p++) {
        char ch = *p;
        if (ch == '%' && hex_value(p[1]) >= 0 && hex_value(p[2]) >= 0) {
            ch = (char)(hex_value(p[1]) * 16 + hex_value(p[2]));
            p += 2;
        }
        if (ch == '/' || ch == '\\' || ch == '\0') {
            if (dots && dots <= 2 && !other) return 1;
            if (!*p) return 0;
            dots = other = 0;
        } else if (ch == '.') {
            dots++;
        } else {
            other++;
        }
    }
}

/* Transfer codings of the request: only "chunked", once, is understood; anything else (gzip,
 * chunked) would be de-chunked and passed on without its coding. 0, or the status. */
static int check_transfer_codings(server_conn_t *c, const http_request_t *req) {
    int chunked = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        if (strcmp(req->headers[i].name, "transfer-encoding") != 0) continue;
        const char *v = req->headers[i].value;
        while (*v) {
            while (*v == ' ' || *v == '\t' || *v == ',')
                v++;
            const char *end = v;
            while (*end && *end != ',')
                end++;
            size_t len = (size_t)(end - v);
            while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
                len--;
            if (len == 7 && strncasecmp(v, "chunked", 7) == 0) {
                if (chunked++) return reject_why(c, 400, "transfer coding chunked applied twice");
            } else if (len) {
                return reject_why(c, 501, "transfer codings other than chunked are not supported");
            }
            v = end;
        }
    }
    return 0;
}

/* The request target: origin-form (/v1/...), asterisk-form for OPTIONS, or absolute-form
 * (http://host/v1/...), which RFC 9112 3.2.2 says a server must accept. Its authority is not
 * ours to check or to act on: this is no forward proxy, so the request is answered by its path
 * whatever host it names, exactly as the origin-form would be. Returns the origin-form part,
 * or NULL (rejected). */
static const char *request_origin_target(server_conn_t *c, http_request_t *req) {
    const char *t = req->target;
    if (t[0] == '/') return t;
    if (req->method == HTTP_OPTIONS && strcmp(t, "*") == 0) return t;
    const char *rest = NULL;
    if (strncasecmp(t, "http://", 7) == 0)
        rest = t + 7;
    else if (strncasecmp(t, "https://", 8) == 0)
        rest = t + 8;
    if (!rest) {
        reject_why(c, 400,
                   req->method == HTTP_CONNECT
                       ? "CONNECT is not supported: this is not a forward proxy"
                       : "the request target must be a path (/v1/...) or an http URL");
        return NULL;
    }
    const char *path = rest + strcspn(rest, "/?#");
    if (path == rest) {
        reject_why(c, 400, "the request target's URL has no host");
        return NULL;
    }
    if (*path == '/') return path;
    /* "http://host" or "http://host?q": the path is "/" */
    char *origin = arena_alloc(&req->arena, strlen(path) + 2);
    if (!origin) return NULL;
    origin[0] = '/';
    strcpy(origin + 1, path);
    return origin;
}

static int headers_result(server_conn_t *c, int rc) {
    if (rc == HH_OK) return 0;
    return reject(c, rc == HH_TOO_LARGE ? 431 : rc == HH_BAD_NAME ? 400 : 500);
}

static int on_message_begin(llhttp_t *p) {
    server_conn_t *c = p->data;
    http_request_t *req = request_new(c);
    if (!req) return reject(c, 500);
    req->start_mono_ns = util_now_mono_ns();
    req->start_wall_ns = util_now_wall_ns();
    memcpy(req->client_ip, c->client_ip, sizeof(req->client_ip));
    c->reading = req;
    http_headers_reset(&c->hh);
    c->url.len = 0;
    /* The whole header block must arrive within SLOW_HEADERS_MS, however it trickles in. */
    conn_deadline(c, SLOW_HEADERS_MS);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    if (headers_result(c, http_headers_count(&c->hh, len))) return -1;
    return buf_append(&c->url, at, len) ? reject(c, 500) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    return headers_result(c, http_headers_on_field(&c->hh, at, len));
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    return headers_result(c, http_headers_on_value(&c->hh, at, len));
}

static int on_header_value_complete(llhttp_t *p) {
    server_conn_t *c = p->data;
    return headers_result(c, http_headers_on_complete(&c->hh, &c->reading->arena));
}

static int on_headers_complete(llhttp_t *p) {
    server_conn_t *c = p->data;
    http_request_t *req = c->reading;
    req->headers = c->hh.items;
    req->n_headers = c->hh.n;
    req->method = p->method;
    req->method_name = llhttp_method_name(p->method);
    req->http_major = p->http_major;
    req->http_minor = p->http_minor;
    if (req->http_major == 0) return reject(c, REJECT_CLOSE);
    if (req->http_major != 1 || req->http_minor > 1)
        return reject_why(c, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
    req->target = arena_strndup(&req->arena, c->url.data ? c->url.data : "", c->url.len);
    if (!req->target) return reject(c, 500);
    char *origin = (char *)request_origin_target(c, req);
    if (!origin) return c->error_status ? -1 : reject(c, 500);
    if (origin != req->target &&
        !(req->target = arena_strndup(&req->arena, origin, strlen(origin))))
        return reject(c, 500);
    char *q = strchr(req->target, '?');
    if (q) {
        req->path = arena_strndup(&req->arena, req->target, (size_t)(q - req->target));
        req->query = q + 1;
    } else {
        req->path = req->target;
    }
    if (!req->path) return reject(c, 500);
    if (path_has_dot_segment(req->path))
        return reject_why(c, 400, "the request path has a dot-segment (. or ..)");
    if (check_transfer_codings(c, req)) return -1;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > HTTP_MAX_BODY_BYTES)
        return reject(c, 413);
    const route_header_t *expect = http_request_header(req, "expect");
    if (expect && strcasecmp(expect->value, "100-continue") == 0 && req->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
        if (stream_write(c->stream, &b, 1, NULL) != 0) return reject(c, 500);
    }
    c->in_body = 1;
    conn_deadline(c, BODY_IDLE_MS);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    http_request_t *req = c->reading;
    if (req->body.len + len > HTTP_MAX_BODY_BYTES) return reject(c, 413);
    return buf_append(&req->body, at, len) ? reject(c, 500) : 0;
}

static int on_message_complete(llhttp_t *p) {
    server_conn_t *c = p->data;
    /* An Upgrade request (h2c, websocket) is answered as plain HTTP and then the connection
     * closes (llhttp would refuse to parse anything after it), unless the handler switches
     * protocols (http_request_upgrade) and takes the connection. */
    c->reading->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    c->reading->upgrade = p->upgrade;
    /* Pause so the request is handled before any pipelined bytes after it are parsed. */
    return HPE_PAUSED;
}

/* Answers a request the parser rejected, then closes: the stream can't be trusted after. */
static void conn_reject(server_conn_t *c, int status, const char *message) {
    http_request_t *req = c->reading;
    c->reading = NULL;
    if (!req && !(req = request_new(c))) {
        conn_close(c);
        return;
    }
    c->discarding = 1;
    c->pending.len = c->pending_off = 0;
    if (c->reading_stopped) {
        c->reading_stopped = 0;
        stream_read_start(c->stream);
    }
    req->http_major = 1;
    req->http_minor = 1;
    req->keep_alive = 0;
    req->method = HTTP_GET;
    req->conn = c;
    c->active = req;
    c->srv->active_requests++;
    const char *type = status == 413   ? "request_too_large"
                       : status == 431 ? "request_header_too_large"
                                       : "invalid_request_error";
    http_respond_error(req, status, type, message);
}

/* Parses until one request is complete or the bytes run out; returns the bytes used.
 * *done gets the completed request, if any; a rejected request is answered here. */
static size_t conn_parse(server_conn_t *c, const char *data, size_t len, http_request_t **done) {
    *done = NULL;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) return len;
    if (err == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        llhttp_resume(&c->parser);
        *done = c->reading;
        c->reading = NULL;
        c->in_body = 0;
        return used;
    }
    if (c->error_status == REJECT_CLOSE) {
        conn_close(c);
        return len;
    }
    /* llhttp says "Invalid HTTP version" for a well-formed one it does not know (HTTP/1.2),
     * "Invalid minor version" and the like for a malformed one (HTTP/1.x): a 400. */
    const char *reason = llhttp_get_error_reason(&c->parser);
    int unknown_version =
        err == HPE_INVALID_VERSION && reason && strcmp(reason, "Invalid HTTP version") == 0;
    int status = c->error_status ? c->error_status : unknown_version ? 505 : 400;
    const char *msg = c->error_message ? c->error_message
                      : status == 431  ? "request header block too large"
                      : status == 413  ? "request body too large"
                      : status == 500  ? "out of memory"
                      : status == 505  ? "only HTTP/1.0 and HTTP/1.1 are supported"
                                       : reason;
    char text[256];
    snprintf(text, sizeof(text), "%s%s",
             status == 400 && !c->error_message ? "malformed request: " : "",
             msg ? msg : "parse error");
    conn_reject(c, status, text);
    return len;
}

static void conn_resume_reading(server_conn_t *c) {
    if (c->reading_stopped && !c->closing && !c->shut_down && !c->peer_eof &&
        c->pending.len - c->pending_off < PENDING_CAP) {
        c->reading_stopped = 0;
        stream_read_start(c->stream);
    }
}

/* Parses held bytes while no request is being answered. */
static void conn_process(server_conn_t *c) {
    if (c->processing) return;
    c->processing = 1;
    while (!c->active && !c->closing && !c->shut_down && !c->write_failed &&
           c->pending_off < c->pending.len) {
        http_request_t *done;
        c->pending_off +=
            conn_parse(c, c->pending.data + c->pending_off, c->pending.len - c->pending_off, &done);
        if (done) dispatch(c, done);
    }
    if (c->pending_off >= c->pending.len) c->pending.len = c->pending_off = 0;
    c->processing = 0;
    if (c->closing || c->shut_down || c->write_failed) return;
    if (c->peer_eof && !c->active) {
        /* Everything the client sent before its FIN is answered; a request it left
         * incomplete never will be. */
        if (c->reading)
            conn_close(c);
        else
            conn_shutdown(c);
        return;
    }
    if (!c->active && !c->reading) conn_deadline(c, KEEPALIVE_IDLE_MS);
    conn_resume_reading(c);
}

static void pending_append(server_conn_t *c, const char *data, size_t len) {
    if (c->pending_off > 0) {
        memmove(c->pending.data, c->pending.data + c->pending_off, c->pending.len - c->pending_off);
        c->pending.len -= c->pending_off;
        c->pending_off = 0;
    }
    if (buf_append(&c->pending, data, len) != 0) conn_close(c);
}

/* ---------------------------------------------------------------- connections */

/* Request bytes, decrypted if need be. */
static void conn_on_bytes(server_conn_t *c, const char *data, size_t len) {
    if (c->write_failed) return;
    if (c->discarding) {
        c->discarded += len;
        if (c->discarded > LINGER_MAX_BYTES) conn_close(c);
        return;
    }
    /* Answered with a close: a request arriving now could never get its response. */
    if (c->shut_down) return;
    if (c->active || c->pending_off < c->pending.len) {
        pending_append(c, data, len);
        if (c->closing) return;
        if (c->pending.len - c->pending_off > PENDING_CAP) {
            stream_read_stop(c->stream);
            c->reading_stopped = 1;
        }
        if (!c->active) conn_process(c);
        return;
    }
    /* The header deadline is fixed; the body's is an idle timeout, so it moves on. */
    if (c->in_body) conn_deadline(c, BODY_IDLE_MS);
    http_request_t *done;
    size_t used = conn_parse(c, data, len, &done);
    if (used < len) pending_append(c, data + used, len - used);
    if (done && !c->closing) dispatch(c, done);
    if (!c->active && !c->closing) conn_process(c);
}

static void on_stream_read(stream_t *s, ssize_t nread, const char *data, refbuf_t *ref) {
    server_conn_t *c = stream_data(s);
    if (nread < 0) {
        if (nread == UV_EPROTO)
            route_log(LOG_DEBUG, "TLS client %s: %s", c->client_ip, stream_error(s));
        /* A FIN after a complete request is a half close (RFC 9112 9.6), not an abort: the
         * client may still read the answer. Only a failed write or a reset ends it early. */
        if (nread == UV_EOF && c->active && !c->write_failed && !c->discarding) {
            c->peer_eof = 1;
            stream_read_stop(c->stream);
            c->reading_stopped = 0;
            return;
        }
        conn_close(c); /* aborts the active request, if any */
        return;
    }
    conn_on_bytes(c, data, (size_t)nread);
}

static void on_stream_write_error(stream_t *s, int status) {
    conn_close(stream_data(s));
}

static void on_stream_drain(stream_t *s) {
    server_conn_t *c = stream_data(s);
    http_request_t *req = c->active;
    if (req && req->on_drain) req->on_drain(req);
}

static void on_stream_shutdown(stream_t *s) {
    server_conn_t *c = stream_data(s);
    c->send_watch = 0;
    /* The answer is out; a client still sending gets LINGER_MS to finish and read it. */
    if (c->discarding && !c->closing) {
        conn_deadline(c, LINGER_MS);
        return;
    }
    conn_close(c);
}

static const stream_callbacks_t conn_stream_events = {
    .on_read = on_stream_read,
    .on_write_error = on_stream_write_error,
    .on_drain = on_stream_drain,
    .on_shutdown = on_stream_shutdown,
};

static uint64_t send_timeout_ms(server_conn_t *c) {
    return (uint64_t)(config_current(c->srv->ctx)->send_timeout * 1000.0);
}

/* How often a waiting send is looked at: a quarter of the timeout, so a client is cut at most
 * that much later than send_timeout after the last byte it took. */
static uint64_t send_check_ms(uint64_t limit, uint64_t stalled) {
    uint64_t every = limit / 4 < 250 ? 250 : limit / 4;
    uint64_t left = limit > stalled ? limit - stalled : 1;
    return left < every ? left : every;
}

/* Bytes wait for the client: from now on the timer checks that it takes some. */
static void conn_watch_send(server_conn_t *c) {
    if (c->send_watch || c->closing || stream_pending(c->stream) == 0) return;
    uint64_t limit = send_timeout_ms(c);
    if (!limit) return;
    c->send_watch = 1;
    conn_deadline(c, send_check_ms(limit, 0));
}

/* A client that took no byte for send_timeout is closed, its request aborted: otherwise it
 * holds its connection and the upstream's forever, reading nothing. A slow reader that takes
 * some bytes now and then is never cut. */
static void conn_check_send(server_conn_t *c) {
    uint64_t stalled = stream_send_stalled_ms(c->stream);
    uint64_t limit = send_timeout_ms(c);
    if (stream_pending(c->stream) == 0 || !limit) {
        c->send_watch = 0;
        return;
    }
    if (stalled < limit) {
        conn_deadline(c, send_check_ms(limit, stalled));
        return;
    }
    route_log_limited(&c->srv->send_timeout_log, LOG_INFO,
                      "client %s took no bytes for %.0f s (send_timeout): closing it", c->client_ip,
                      (double)limit / 1000.0);
    if (c->active) c->active->abort_reason = "client send timeout";
    conn_close(c);
}

static void on_conn_timer(uv_timer_t *t) {
    server_conn_t *c = t->data;
    if (!c->write_failed) {
        if (!deadline_due_early(t, &c->deadline, SLOW_HEADERS_MS, on_conn_timer)) return;
        if (c->send_watch) {
            conn_check_send(c);
            return;
        }
        if (c->active) return;
    }
    /* Slow headers, slow body, an idle keep-alive connection or a dead client: drop it. */
    conn_close(c);
}

static void conn_free(server_conn_t *c) {
    http_headers_free(&c->hh);
    buf_free(&c->pending);
    buf_free(&c->url);
    buf_free(&c->head);
    free(c);
}

/* A recycled connection keeps its buffers' memory (up to small caps), nothing else. */
static server_conn_t *conn_get(server_t *srv) {
    server_conn_t *c = srv->free_conns;
    if (!c) return calloc(1, sizeof(*c));
    srv->free_conns = c->next;
    srv->n_free_conns--;
    http_headers_t hh = c->hh;
    buf_t pending = c->pending, url = c->url, head = c->head;
    if (pending.cap > PENDING_CAP) buf_free(&pending);
    if (url.cap > 4096) buf_free(&url);
    if (hh.name.cap > 4096) buf_free(&hh.name);
    if (hh.value.cap > 4096) buf_free(&hh.value);
    memset(c, 0, sizeof(*c));
    pending.len = url.len = head.len = 0;
    c->hh = hh;
    c->pending = pending;
    c->url = url;
    c->head = head;
    return c;
}

static void on_conn_closed(uv_handle_t *h) {
    server_conn_t *c = h->data;
    server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->n_conns--;
    if (c->reading) http_request_release(c->reading);
    if (srv->n_free_conns < FREE_CONNS_MAX && !srv->ctx->shutting_down) {
        c->next = srv->free_conns;
        srv->free_conns = c;
        srv->n_free_conns++;
        return;
    }
    conn_free(c);
}

static void conn_close(server_conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    head_list_remove(c);
    http_request_t *req = c->active;
    if (req && !req->response_done) {
        req->conn = NULL;
        c->active = NULL;
        c->srv->active_requests--;
        if (req->on_abort) req->on_abort(req);
        req->response_done = 1;
        http_request_release(req);
    }
    stream_close(c->stream);
    c->stream = NULL;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

const stream_callbacks_t *http1_stream_callbacks(void) {
    return &conn_stream_events;
}

void http1_conn_start(server_t *srv, stream_t *stream) {
    server_conn_t *c = conn_get(srv);
    if (!c) {
        stream_close(stream);
        return;
    }
    c->srv = srv;
    c->stream = stream;
    stream_set_data(stream, c, NULL);
    uv_timer_init(srv->ctx->loop, &c->timer);
    c->timer.data = c;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    stream_set_watermarks(c->stream, HTTP_WRITE_HIGH_WATER, HTTP_WRITE_LOW_WATER);
    stream_peer_ip(c->stream, c->client_ip, sizeof(c->client_ip));
    c->hh.max_bytes = HTTP_MAX_HEADER_BYTES;
    c->hh.strict_names = 1;
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    conn_deadline(c, SLOW_HEADERS_MS);
}

/* ---------------------------------------------------------------- protocol switches */

int http_request_is_upgrade(const http_request_t *req) {
    return req->upgrade;
}

/* The connection keeps its place in the server's list (and the request its place among the
 * active ones) while the handler owns the stream, so shutdown and max_connections see it;
 * c->stream is NULL meanwhile, which every later conn_close tolerates. */
stream_t *http_request_upgrade(http_request_t *req, const char *protocol, const char *headers,
                               size_t headers_len, buf_t *early) {
    server_conn_t *c = req->conn;
    if (!c || !c->stream || c->closing || c->shut_down || c->write_failed || !req->upgrade ||
        req->response_started)
        return NULL;
    buf_t *out = &c->head;
    out->len = 0;
    int rc = buf_appends(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ");
    rc |= buf_appends(out, protocol);
    rc |= buf_appends(out, "\r\nConnection: Upgrade\r\n");
    if (headers_len) rc |= buf_append(out, headers, headers_len);
    rc |= buf_append(out, "\r\n", 2);
    /* Pipelined bytes held after the head belong to the new protocol. */
    if (c->pending_off < c->pending.len)
        rc |= buf_append(early, c->pending.data + c->pending_off, c->pending.len - c->pending_off);
    if (rc == 0) {
        uv_buf_t b = uv_buf_init(out->data, (unsigned)out->len);
        rc = stream_write(c->stream, &b, 1, NULL);
    }
    out->len = 0;
    if (rc != 0) {
        conn_write_failed(c);
        return NULL;
    }
    req->response_started = 1;
    req->status = 101;
    c->pending.len = c->pending_off = 0;
    c->reading_stopped = 0;
    c->deadline = 0;
    stream_t *s = c->stream;
    c->stream = NULL;
    stream_set_data(s, NULL, NULL);
    return s;
}

void http_request_upgrade_end(http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c || req->response_done) return;
    req->response_done = 1;
    c->active = NULL;
    c->srv->active_requests--;
    req->conn = NULL;
    http_request_release(req);
    conn_close(c);
}

/* 0 when llhttp was built loose (a system library): it then takes any two bytes after chunk
 * data for the CRLF. Said once at start, so an operator knows the framing is not checked. */
static int llhttp_checks_chunk_crlf(void) {
    static const char probe[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX";
    llhttp_settings_t settings;
    llhttp_t p;
    llhttp_settings_init(&settings);
    llhttp_init(&p, HTTP_REQUEST, &settings);
    return llhttp_execute(&p, probe, sizeof(probe) - 1) != HPE_OK;
}

void http1_server_init(server_t *srv) {
    if (!llhttp_checks_chunk_crlf())
        route_log(LOG_WARN, "llhttp is built without LLHTTP_STRICT_MODE: chunk framing is "
                            "parsed leniently");
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;
    uv_check_init(srv->ctx->loop, &srv->head_check);
    srv->head_check.data = srv;
    uv_check_start(&srv->head_check, on_head_check);
    uv_unref((uv_handle_t *)&srv->head_check);
}

void http1_server_release(server_t *srv) {
    while (srv->free_reqs) {
        http_request_t *req = srv->free_reqs;
        srv->free_reqs = req->next_free;
        buf_free(&req->body);
        free(req);
    }
    srv->n_free_reqs = 0;
    while (srv->free_conns) {
        server_conn_t *c = srv->free_conns;
        srv->free_conns = c->next;
        conn_free(c);
    }
    srv->n_free_conns = 0;
}

void http1_close_idle(server_t *srv) {
    for (server_conn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (!c->active && !c->reading) conn_close(c);
    }
}

void http1_close_all(server_t *srv) {
    for (server_conn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}

/* ---------------------------------------------------------------- fuzzing seam */

int http1_server_feed_for_fuzz(server_t *srv, const char *data, ssize_t nread) {
    server_conn_t *c = srv->conns;
    if (!c || c->closing || c->write_failed) return -1;
    on_stream_read(c->stream, nread, data, NULL);
    return 0;
}

size_t http1_server_queued_for_fuzz(server_t *srv) {
    server_conn_t *c = srv->conns;
    if (!c || c->closing) return 0;
    return stream_pending(c->stream) + (c->head_waiting ? c->head.len : 0);
}
