/* server.c: the listening socket and the client connections of one event loop.
 *
 * Owns: accepting, llhttp request parsing, the limits (header block, body, slow headers,
 * connection count), keep-alive and pipelining (one request handled at a time per connection,
 * later bytes held until its response ends), response framing (Content-Length, chunked or
 * close-delimited), CORS headers, and routing a complete request to its handler.
 * Must not: know what a handler does with a request, or block (handlers answer
 * asynchronously through the http_response_* calls). */
#include "route/server.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route/admin.h"
#include "route/config.h"
#include "route/proxy.h"
#include "route/store.h"
#include "route/tls.h"

#define READ_BUF_SIZE     (64 * 1024)
#define SLOW_HEADERS_MS   (30 * 1000)
#define BODY_IDLE_MS      (60 * 1000)
#define KEEPALIVE_IDLE_MS (75 * 1000)
/* Pipelined bytes held while a request is handled; past this we stop reading. */
#define PENDING_CAP (256 * 1024)

static const char CORS_HEADERS[] =
    "Access-Control-Allow-Origin: *\r\n"
    "Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE, PATCH\r\n"
    "Access-Control-Allow-Headers: Origin, Authorization, Content-Type\r\n";

typedef struct server_conn server_conn_t;

/* A write in flight. Reused through a free list: streaming must not allocate per chunk. */
typedef struct conn_write {
    uv_write_t w;
    server_conn_t *conn;
    refbuf_t *ref;
    size_t bytes;
    char frame[24]; /* chunk-size line */
    struct conn_write *next_free;
} conn_write_t;

struct server {
    route_ctx_t *ctx;
    uv_tcp_t listener;
    int listening;
    llhttp_settings_t settings;
    server_conn_t *conns; /* intrusive list of open connections */
    size_t n_conns, active_requests;
    conn_write_t *free_writes;
    size_t n_free_writes;
    char read_buf[READ_BUF_SIZE];
    char plain_buf[READ_BUF_SIZE]; /* decrypted bytes of an HTTPS connection */
};

struct server_conn {
    server_t *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    llhttp_t parser;
    server_conn_t *prev, *next;
    char client_ip[64];

    http_request_t *reading; /* being parsed */
    http_request_t *active;  /* being answered */
    size_t header_bytes;
    size_t headers_cap;
    buf_t url, field, value;
    int error_status; /* set by a callback that rejects the request */
    int in_body;

    buf_t pending; /* bytes received but not parsed yet (pipelining) */
    size_t pending_off;
    int reading_stopped, processing, closing, shut_down;
    size_t write_queued;
    int above_high_water;
    tls_conn_t *tls; /* HTTPS listener only */
    int handles_open;
    int tls_ready;
};

static void conn_close(server_conn_t *c);
static void conn_process(server_conn_t *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* ---------------------------------------------------------------- requests */

void http_request_retain(http_request_t *req) {
    req->refs++;
}

void http_request_release(http_request_t *req) {
    if (--req->refs > 0) return;
    buf_free(&req->body);
    arena_free(&req->arena);
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

const route_header_t *http_request_header(const http_request_t *req, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name_len == n && memcmp(req->headers[i].name, name, n) == 0)
            return &req->headers[i];
    return NULL;
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

static conn_write_t *write_get(server_t *srv) {
    conn_write_t *w = srv->free_writes;
    if (w) {
        srv->free_writes = w->next_free;
        srv->n_free_writes--;
        return w;
    }
    return malloc(sizeof(*w));
}

static void write_put(server_t *srv, conn_write_t *w) {
    if (srv->n_free_writes >= 1024) {
        free(w);
        return;
    }
    w->next_free = srv->free_writes;
    srv->free_writes = w;
    srv->n_free_writes++;
}

static void on_write_done(uv_write_t *uw, int status) {
    conn_write_t *w = (conn_write_t *)uw;
    server_conn_t *c = w->conn;
    c->write_queued -= w->bytes;
    if (w->ref) refbuf_release(w->ref);
    write_put(c->srv, w);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->above_high_water && c->write_queued <= HTTP_WRITE_LOW_WATER) {
        c->above_high_water = 0;
        http_request_t *req = c->active;
        if (req && req->on_drain) req->on_drain(req);
    }
}

/* Queues bufs (which stay valid: they point into ref, or into w->frame, or static text). */
typedef struct tls_write {
    uv_write_t w;
    server_conn_t *conn;
    buf_t bytes;
} tls_write_t;

static void on_tls_write_done(uv_write_t *uw, int status) {
    tls_write_t *w = (tls_write_t *)uw;
    server_conn_t *c = w->conn;
    c->write_queued -= w->bytes.len;
    buf_free(&w->bytes);
    free(w);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->above_high_water && c->write_queued <= HTTP_WRITE_LOW_WATER) {
        c->above_high_water = 0;
        http_request_t *req = c->active;
        if (req && req->on_drain) req->on_drain(req);
    }
}

/* Sends what mbedTLS encrypted. */
static int conn_flush_tls(server_conn_t *c) {
    buf_t *out = tls_pending_out(c->tls);
    if (out->len == 0) return 0;
    tls_write_t *w = malloc(sizeof(*w));
    if (!w) return -1;
    w->conn = c;
    w->bytes = *out;
    memset(out, 0, sizeof(*out));
    c->write_queued += w->bytes.len;
    if (c->write_queued > HTTP_WRITE_HIGH_WATER) c->above_high_water = 1;
    uv_buf_t b = uv_buf_init(w->bytes.data, (unsigned)w->bytes.len);
    if (uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write_done) < 0) {
        c->write_queued -= w->bytes.len;
        buf_free(&w->bytes);
        free(w);
        return -1;
    }
    return 0;
}

static int conn_write(server_conn_t *c, uv_buf_t *bufs, unsigned nbufs, refbuf_t *ref,
                      conn_write_t *w) {
    if (c->closing || c->shut_down) {
        if (w) write_put(c->srv, w);
        return -1;
    }
    if (c->tls) { /* encryption copies the bytes, so nothing needs to stay alive */
        if (w) write_put(c->srv, w);
        for (unsigned i = 0; i < nbufs; i++)
            if (tls_write(c->tls, bufs[i].base, bufs[i].len) != 0) return -1;
        return conn_flush_tls(c);
    }
    if (!w) w = write_get(c->srv);
    if (!w) return -1;
    w->conn = c;
    w->ref = ref;
    w->bytes = 0;
    for (unsigned i = 0; i < nbufs; i++)
        w->bytes += bufs[i].len;
    if (ref) refbuf_retain(ref);
    c->write_queued += w->bytes;
    if (c->write_queued > HTTP_WRITE_HIGH_WATER) c->above_high_water = 1;
    int rc = uv_write(&w->w, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write_done);
    if (rc < 0) {
        c->write_queued -= w->bytes;
        if (ref) refbuf_release(ref);
        write_put(c->srv, w);
        return -1;
    }
    return 0;
}

static int conn_write_copy(server_conn_t *c, const char *data, size_t len) {
    refbuf_t *b = refbuf_new(len);
    if (!b) return -1;
    memcpy(b->data, data, len);
    b->len = len;
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)len);
    int rc = conn_write(c, &ub, 1, b, NULL);
    refbuf_release(b);
    return rc;
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
    char head[512];
    int n = snprintf(head, sizeof(head), "HTTP/1.%d %d %s\r\n", http11 ? 1 : 0, status,
                     status_text(status));
    buf_t out = {0};
    buf_append(&out, head, (size_t)n);
    if (headers && headers_len) buf_append(&out, headers, headers_len);
    buf_append(&out, CORS_HEADERS, sizeof(CORS_HEADERS) - 1);
    if (req->response_chunked)
        buf_appends(&out, "Transfer-Encoding: chunked\r\n");
    else if (content_length >= 0 && status != 204 && status >= 200)
        buf_printf(&out, "Content-Length: %lld\r\n", (long long)content_length);
    if (req->response_close)
        buf_appends(&out, "Connection: close\r\n");
    else if (!http11)
        buf_appends(&out, "Connection: keep-alive\r\n");
    buf_appends(&out, "\r\n");
    int rc = out.data ? conn_write_copy(c, out.data, out.len) : -1;
    buf_free(&out);
    return rc;
}

int http_response_write(http_request_t *req, const char *data, size_t len, refbuf_t *ref) {
    server_conn_t *c = req->conn;
    if (!c || !req->response_started || req->response_done) return -1;
    if (len == 0 || req->method == HTTP_HEAD) return 0;
    if (!ref) {
        if (!req->response_chunked) return conn_write_copy(c, data, len);
        refbuf_t *b = refbuf_new(len);
        if (!b) return -1;
        memcpy(b->data, data, len);
        b->len = len;
        int rc = http_response_write(req, b->data, len, b);
        refbuf_release(b);
        return rc;
    }
    conn_write_t *w = write_get(c->srv);
    if (!w) return -1;
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (req->response_chunked) {
        int fl = snprintf(w->frame, sizeof(w->frame), "%zx\r\n", len);
        bufs[n++] = uv_buf_init(w->frame, (unsigned)fl);
    }
    bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
    if (req->response_chunked) bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    return conn_write(c, bufs, n, ref, w);
}

size_t http_response_pending(const http_request_t *req) {
    return req->conn ? req->conn->write_queued : 0;
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
    server_conn_t *c = sr->data;
    free(sr);
    conn_close(c);
}

/* Lets queued writes finish, then closes: uv_close alone would cancel them. */
static void conn_shutdown(server_conn_t *c) {
    if (c->closing || c->shut_down) return;
    c->shut_down = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_shutdown_t *sr = malloc(sizeof(*sr));
    if (!sr || uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(sr);
        conn_close(c);
        return;
    }
    sr->data = c;
}

/* The connection is done with its active request. */
static void conn_request_finished(server_conn_t *c, http_request_t *req, int close_after) {
    req->response_done = 1;
    c->active = NULL;
    c->above_high_water = 0;
    c->srv->active_requests--;
    req->conn = NULL;
    http_request_release(req);
    if (close_after || c->srv->ctx->shutting_down) {
        conn_shutdown(c);
        return;
    }
    conn_process(c);
}

void http_response_end(http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c || req->response_done) return;
    if (!req->response_started) http_response_start(req, 200, NULL, 0, 0);
    if (req->response_chunked && req->method != HTTP_HEAD) {
        static const char last[] = "0\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)last, sizeof(last) - 1);
        conn_write(c, &b, 1, NULL, NULL);
    }
    conn_request_finished(c, req, req->response_close);
}

void http_response_abort(http_request_t *req) {
    server_conn_t *c = req->conn;
    if (!c || req->response_done) return;
    conn_request_finished(c, req, 1);
}

void http_respond_json(http_request_t *req, int status, const char *json, size_t len) {
    static const char ct[] = "Content-Type: application/json; charset=utf-8\r\n";
    if (http_response_start(req, status, ct, sizeof(ct) - 1, (int64_t)len) == 0)
        http_response_write(req, json, len, NULL);
    http_response_end(req);
}

void http_respond_error(http_request_t *req, int status, const char *type, const char *message) {
    buf_t b = {0};
    buf_appends(&b, "{\"error\":{\"message\":");
    buf_append_json_string(&b, message, strlen(message));
    buf_appends(&b, ",\"type\":");
    buf_append_json_string(&b, type, strlen(type));
    buf_appends(&b, "}}\n");
    if (b.data)
        http_respond_json(req, status, b.data, b.len);
    else
        http_response_abort(req);
    buf_free(&b);
}

/* ---------------------------------------------------------------- routing */

static int path_is_under(const char *path, const char *prefix) {
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void dispatch(server_conn_t *c, http_request_t *req) {
    c->active = req;
    c->srv->active_requests++;
    uv_timer_stop(&c->timer);
    if (req->method == HTTP_OPTIONS) {
        http_response_start(req, 200, NULL, 0, 0);
        http_response_end(req);
    } else if (path_is_under(req->path, "/v1")) {
        proxy_handle(req);
    } else if (path_is_under(req->path, "/admin")) {
        admin_handle(req);
    } else if (strcmp(req->path, "/metrics") == 0) {
        metrics_handle(req);
    } else {
        http_respond_error(req, 404, "invalid_request_error", "not found");
    }
}

/* ---------------------------------------------------------------- parsing */

static int reject(server_conn_t *c, int status) {
    c->error_status = status;
    return -1;
}

static int count_header_bytes(server_conn_t *c, size_t n) {
    c->header_bytes += n;
    return c->header_bytes > HTTP_MAX_HEADER_BYTES ? reject(c, 431) : 0;
}

static void on_conn_timer(uv_timer_t *t);

static int on_message_begin(llhttp_t *p) {
    server_conn_t *c = p->data;
    http_request_t *req = calloc(1, sizeof(*req));
    if (!req) return reject(c, 500);
    arena_init(&req->arena);
    req->refs = 1;
    req->ctx = c->srv->ctx;
    req->start_mono_ns = util_now_mono_ns();
    req->start_wall_ns = util_now_wall_ns();
    memcpy(req->client_ip, c->client_ip, sizeof(req->client_ip));
    c->reading = req;
    c->header_bytes = 0;
    c->headers_cap = 0;
    c->url.len = c->field.len = c->value.len = 0;
    /* The whole header block must arrive within SLOW_HEADERS_MS, however it trickles in. */
    uv_timer_start(&c->timer, on_conn_timer, SLOW_HEADERS_MS, 0);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    if (count_header_bytes(c, len)) return -1;
    return buf_append(&c->url, at, len) ? reject(c, 500) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    if (count_header_bytes(c, len + 4)) return -1;
    return buf_append(&c->field, at, len) ? reject(c, 500) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    server_conn_t *c = p->data;
    if (count_header_bytes(c, len)) return -1;
    return buf_append(&c->value, at, len) ? reject(c, 500) : 0;
}

/* RFC 9110 token characters: llhttp's non-strict build lets "Name : value" through, and
 * RFC 9112 says a server must reject whitespace before the colon. */
static int is_token(const char *s, size_t n) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 32 || ch >= 127 || strchr("\"(),/:;<=>?@[\\]{}", ch)) return 0;
    }
    return 1;
}

static int on_header_value_complete(llhttp_t *p) {
    server_conn_t *c = p->data;
    http_request_t *req = c->reading;
    if (!is_token(c->field.data, c->field.len)) return reject(c, 400);
    if (req->n_headers == c->headers_cap) {
        size_t cap = c->headers_cap ? c->headers_cap * 2 : 16;
        route_header_t *h = arena_alloc(&req->arena, cap * sizeof(*h));
        if (!h) return reject(c, 500);
        if (req->n_headers) memcpy(h, req->headers, req->n_headers * sizeof(*h));
        req->headers = h;
        c->headers_cap = cap;
    }
    route_header_t *h = &req->headers[req->n_headers++];
    h->name = arena_strndup(&req->arena, c->field.data ? c->field.data : "", c->field.len);
    h->name_len = c->field.len;
    for (size_t i = 0; i < h->name_len; i++)
        if (h->name[i] >= 'A' && h->name[i] <= 'Z') h->name[i] += 'a' - 'A';
    const char *v = c->value.data ? c->value.data : "";
    size_t vl = c->value.len;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    h->value = arena_strndup(&req->arena, v, vl);
    h->value_len = vl;
    c->field.len = c->value.len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    server_conn_t *c = p->data;
    http_request_t *req = c->reading;
    req->method = p->method;
    req->method_name = llhttp_method_name(p->method);
    req->http_major = p->http_major;
    req->http_minor = p->http_minor;
    req->target = arena_strndup(&req->arena, c->url.data ? c->url.data : "", c->url.len);
    if (!req->target) return reject(c, 500);
    char *q = strchr(req->target, '?');
    if (q) {
        req->path = arena_strndup(&req->arena, req->target, (size_t)(q - req->target));
        req->query = q + 1;
    } else {
        req->path = req->target;
    }
    if (req->target[0] != '/' && req->method != HTTP_OPTIONS) return reject(c, 400);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > HTTP_MAX_BODY_BYTES)
        return reject(c, 413);
    const route_header_t *expect = http_request_header(req, "expect");
    if (expect && strcasecmp(expect->value, "100-continue") == 0 && req->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
        conn_write(c, &b, 1, NULL, NULL);
    }
    c->in_body = 1;
    uv_timer_start(&c->timer, on_conn_timer, BODY_IDLE_MS, 0);
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
     * closes: llhttp would refuse to parse anything after it. */
    c->reading->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    /* Pause so the request is handled before any pipelined bytes after it are parsed. */
    return HPE_PAUSED;
}

/* Answers a request the parser rejected, then closes: the stream can't be trusted after. */
static void conn_reject(server_conn_t *c, int status, const char *message) {
    http_request_t *req = c->reading;
    c->reading = NULL;
    if (!req) {
        req = calloc(1, sizeof(*req));
        if (!req) {
            conn_close(c);
            return;
        }
        arena_init(&req->arena);
        req->refs = 1;
        req->ctx = c->srv->ctx;
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
    int status = c->error_status ? c->error_status : 400;
    const char *msg = status == 431   ? "request header block too large"
                      : status == 413 ? "request body too large"
                      : status == 500 ? "out of memory"
                                      : llhttp_get_error_reason(&c->parser);
    char text[256];
    snprintf(text, sizeof(text), "%s%s", status == 400 ? "malformed request: " : "",
             msg ? msg : "parse error");
    conn_reject(c, status, text);
    return len;
}

static void conn_resume_reading(server_conn_t *c);

/* Parses held bytes while no request is being answered. */
static void conn_process(server_conn_t *c) {
    if (c->processing) return;
    c->processing = 1;
    while (!c->active && !c->closing && !c->shut_down && c->pending_off < c->pending.len) {
        http_request_t *done;
        c->pending_off +=
            conn_parse(c, c->pending.data + c->pending_off, c->pending.len - c->pending_off, &done);
        if (done) {
            done->conn = c;
            dispatch(c, done);
        }
    }
    if (c->pending_off >= c->pending.len) c->pending.len = c->pending_off = 0;
    c->processing = 0;
    if (c->closing || c->shut_down) return;
    if (!c->active && !c->reading) uv_timer_start(&c->timer, on_conn_timer, KEEPALIVE_IDLE_MS, 0);
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

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    /* One buffer per loop is enough: bytes are parsed or copied before the next read. */
    server_conn_t *c = h->data;
    buf->base = c->srv->read_buf;
    buf->len = sizeof(c->srv->read_buf);
}

static void conn_on_bytes(server_conn_t *c, char *data, size_t len);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    server_conn_t *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        conn_close(c); /* aborts the active request, if any */
        return;
    }
    if (!c->tls) {
        conn_on_bytes(c, buf->base, (size_t)nread);
        return;
    }
    char err[300];
    if (tls_feed(c->tls, buf->base, (size_t)nread) != 0) {
        conn_close(c);
        return;
    }
    if (!c->tls_ready) {
        int hs = tls_handshake(c->tls, err, sizeof(err));
        if (hs < 0 || conn_flush_tls(c) != 0) {
            route_log(LOG_DEBUG, "TLS client %s: %s", c->client_ip, hs < 0 ? err : "write");
            conn_close(c);
            return;
        }
        if (hs == 0) return;
        c->tls_ready = 1;
    }
    while (!c->closing && !c->shut_down) {
        ssize_t n =
            tls_read(c->tls, c->srv->plain_buf, sizeof(c->srv->plain_buf), err, sizeof(err));
        if (n == 0) return;
        if (n < 0) {
            conn_close(c);
            return;
        }
        conn_on_bytes(c, c->srv->plain_buf, (size_t)n);
    }
}

/* Request bytes, decrypted if need be. */
static void conn_on_bytes(server_conn_t *c, char *data, size_t len) {
    uv_stream_t *s = (uv_stream_t *)&c->tcp;
    ssize_t nread = (ssize_t)len;
    const uv_buf_t one = uv_buf_init(data, (unsigned)len), *buf = &one;
    if (c->active || c->pending_off < c->pending.len) {
        pending_append(c, buf->base, (size_t)nread);
        if (c->pending.len - c->pending_off > PENDING_CAP) {
            uv_read_stop(s);
            c->reading_stopped = 1;
        }
        if (!c->active) conn_process(c);
        return;
    }
    /* The header deadline is fixed; the body's is an idle timeout, so it moves on. */
    if (c->in_body) uv_timer_start(&c->timer, on_conn_timer, BODY_IDLE_MS, 0);
    http_request_t *done;
    size_t used = conn_parse(c, buf->base, (size_t)nread, &done);
    if (used < (size_t)nread) pending_append(c, buf->base + used, (size_t)nread - used);
    if (done) {
        done->conn = c;
        dispatch(c, done);
    }
    if (!c->active) conn_process(c);
}

static void conn_resume_reading(server_conn_t *c) {
    if (c->reading_stopped && !c->closing && !c->shut_down &&
        c->pending.len - c->pending_off < PENDING_CAP) {
        c->reading_stopped = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
}

static void on_conn_timer(uv_timer_t *t) {
    server_conn_t *c = t->data;
    if (c->active) return;
    /* Slow headers, slow body or an idle keep-alive connection: drop it quietly. */
    conn_close(c);
}

static void on_conn_closed(uv_handle_t *h) {
    server_conn_t *c = h->data;
    if (--c->handles_open > 0) return;
    server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->n_conns--;
    if (c->reading) http_request_release(c->reading);
    tls_conn_free(c->tls);
    buf_free(&c->pending);
    buf_free(&c->url);
    buf_free(&c->field);
    buf_free(&c->value);
    free(c);
}

static void conn_close(server_conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    http_request_t *req = c->active;
    if (req && !req->response_done) {
        req->conn = NULL;
        c->active = NULL;
        c->srv->active_requests--;
        if (req->on_abort) req->on_abort(req);
        req->response_done = 1;
        http_request_release(req);
    }
    /* Both handles at once: a shutdown's uv_walk must find neither still open. */
    c->handles_open = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void peer_ip(uv_tcp_t *tcp, char *out, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    out[0] = '\0';
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, out, cap);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, out, cap);
}

static void on_connection(uv_stream_t *listener, int status) {
    server_t *srv = listener->data;
    if (status < 0) {
        route_log(LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    server_conn_t *c = calloc(1, sizeof(*c));
    if (!c) return;
    c->srv = srv;
    uv_tcp_init(srv->ctx->loop, &c->tcp);
    uv_timer_init(srv->ctx->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    int64_t limit = config_current(srv->ctx)->max_connections;
    if (srv->n_conns > (size_t)limit) {
        route_log(LOG_WARN, "connection limit %lld reached, refusing a client", (long long)limit);
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    peer_ip(&c->tcp, c->client_ip, sizeof(c->client_ip));
    if (srv->ctx->tls_server && !(c->tls = tls_conn_new(srv->ctx->tls_server, NULL, NULL))) {
        conn_close(c);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_conn_timer, SLOW_HEADERS_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int server_start(route_ctx_t *ctx, char *err, size_t err_cap) {
    server_t *srv = calloc(1, sizeof(*srv));
    if (!srv) {
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    srv->ctx = ctx;
    ctx->server = srv;
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;

    char host[256];
    int port;
    if (cli_split_addr(ctx->opts->addr, host, sizeof(host), &port) != 0) {
        snprintf(err, err_cap, "invalid listen address '%s'", ctx->opts->addr);
        return -1;
    }
    struct sockaddr_storage ss;
    if (host[0] == '\0') {
        uv_ip6_addr("::", port, (struct sockaddr_in6 *)&ss);
    } else if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
               uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        /* A name: resolving it once at start-up may block; nothing else runs yet. */
        struct addrinfo hints = {0}, *res = NULL;
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) {
            snprintf(err, err_cap, "cannot resolve listen host '%s'", host);
            return -1;
        }
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        freeaddrinfo(res);
    }
    uv_tcp_init(ctx->loop, &srv->listener);
    srv->listener.data = srv;
    int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (rc != 0 && host[0] == '\0') {
        /* No IPv6 on this machine: all IPv4 interfaces then. */
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_run(ctx->loop, UV_RUN_NOWAIT);
        uv_tcp_init(ctx->loop, &srv->listener);
        srv->listener.data = srv;
        uv_ip4_addr("0.0.0.0", port, (struct sockaddr_in *)&ss);
        rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
        if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    }
    if (rc != 0) {
        snprintf(err, err_cap, "listen on %s: %s", ctx->opts->addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&srv->listener, NULL);
        return -1;
    }
    srv->listening = 1;
    return 0;
}

void server_stop_accepting(route_ctx_t *ctx) {
    server_t *srv = ctx->server;
    if (!srv || !srv->listening) return;
    srv->listening = 0;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    /* Idle keep-alive connections have nothing to finish. */
    for (server_conn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (!c->active && !c->reading) conn_close(c);
    }
}

size_t server_active_requests(route_ctx_t *ctx) {
    return ctx->server ? ctx->server->active_requests : 0;
}

size_t server_open_connections(route_ctx_t *ctx) {
    return ctx->server ? ctx->server->n_conns : 0;
}

void server_close_all(route_ctx_t *ctx) {
    server_t *srv = ctx->server;
    if (!srv) return;
    for (server_conn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}

void server_free(route_ctx_t *ctx) {
    server_t *srv = ctx->server;
    if (!srv) return;
    while (srv->free_writes) {
        conn_write_t *w = srv->free_writes;
        srv->free_writes = w->next_free;
        free(w);
    }
    free(srv);
    ctx->server = NULL;
}
