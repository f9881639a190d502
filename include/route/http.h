/* http.h: the server side of one HTTP exchange, as handlers (proxy, admin) see it.
 * The server owns parsing, limits, keep-alive and pipelining; handlers get a complete request
 * (headers + body, bounded) and answer through the http_response_* calls below. */
#ifndef ROUTE_HTTP_H
#define ROUTE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "route/util.h"

#define HTTP_MAX_HEADER_BYTES (64 * 1024)
#define HTTP_MAX_BODY_BYTES   (32 * 1024 * 1024)

typedef struct route_header {
    char *name; /* lower-cased */
    size_t name_len;
    char *value;
    size_t value_len;
} route_header_t;

typedef struct http_request http_request_t;
typedef void (*http_request_cb)(http_request_t *req);

/* Opaque: the HTTP core's private struct (src/http_internal.h). */

#define HTTP_WRITE_HIGH_WATER (1024 * 1024)
#define HTTP_WRITE_LOW_WATER  (256 * 1024)

/* Accessors: handlers read a request only through these. Strings stay valid for the
 * request's life. */
struct route_ctx *http_request_ctx(const http_request_t *req);
arena_t *http_request_arena(http_request_t *req);
const char *http_request_method(const http_request_t *req); /* "POST" */
const char *http_request_path(const http_request_t *req);   /* before '?', not decoded */
const char *http_request_query(const http_request_t *req);  /* after '?', or NULL */
size_t http_request_header_count(const http_request_t *req);
const route_header_t *http_request_header_at(const http_request_t *req, size_t i);
const char *http_request_body(const http_request_t *req, size_t *len); /* never NULL */
const char *http_request_client_ip(const http_request_t *req);
int64_t http_request_start_mono_ns(const http_request_t *req);
int64_t http_request_start_wall_ns(const http_request_t *req);
/* 0 once the client connection is gone. */
int http_request_client_connected(const http_request_t *req);
/* The handler's state and its two events; NULLs detach. on_abort: the client went away
 * before http_response_end. on_drain: the bytes queued to the client fell below
 * HTTP_WRITE_LOW_WATER after being above HTTP_WRITE_HIGH_WATER. */
void http_request_set_handler(http_request_t *req, void *data, http_request_cb on_abort,
                              http_request_cb on_drain);
void *http_request_handler_data(const http_request_t *req);
/* Why the client went away, for on_abort: "client disconnected" or "client send timeout". */
const char *http_request_abort_reason(const http_request_t *req);

void http_request_retain(http_request_t *req);
void http_request_release(http_request_t *req);

/* First header with that lower-case name, or NULL. */
const route_header_t *http_request_header(const http_request_t *req, const char *name);

/* Starts the response. `headers` holds complete "Name: value\r\n" lines (may be NULL), never
 * CORS or Connection or framing headers: the server adds those. content_length < 0 means
 * unknown: chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0. */
int http_response_start(http_request_t *req, int status, const char *headers, size_t headers_len,
                        int64_t content_length);
/* Body bytes. With ref the bytes are sent in place (ref is retained until written);
 * without, they are copied. Returns -1 when the client is gone. */
int http_response_write(http_request_t *req, const char *data, size_t len, refbuf_t *ref);
/* Bytes handed to the client socket but not yet written. */
size_t http_response_pending(const http_request_t *req);
/* Response body bytes handed to the client so far (no head, no chunk framing). */
uint64_t http_response_bytes_sent(const http_request_t *req);
/* The handler writes this request's access log line itself (the proxy, with what it knows of
 * upstreams and tokens); otherwise the server writes one when the response ends. */
void http_request_set_logs_itself(http_request_t *req);
/* Completes the response (terminating chunk) and lets the connection go on to the next
 * request. The handler must not touch the response after this. */
void http_response_end(http_request_t *req);
/* Ends a response that cannot complete (an upstream broke mid-stream): the client sees the
 * connection close without a terminating chunk, so it knows the body is truncated. */
void http_response_abort(http_request_t *req);

/* Protocol switches (a WebSocket handshake). 1 when the request asked for one: llhttp saw
 * both "Connection: upgrade" and an Upgrade header. Such a request is never kept alive. */
int http_request_is_upgrade(const http_request_t *req);
/* Hands the client connection to the handler: sends "101 Switching Protocols" with Upgrade:
 * protocol, Connection: Upgrade and `headers` (complete "Name: value\r\n" lines), and returns
 * the connection's stream, which is the handler's from then on: it must set its own callbacks
 * (stream_set_data) before returning to the loop and close the stream when done. Bytes the
 * client sent after the request head are appended to *early. The request stays active (the
 * connection counts as open and busy; closing every connection at shutdown calls on_abort)
 * until http_request_upgrade_end. NULL when the client is gone or the 101 could not be
 * written (the connection then closes, as after any failed write; end the response with
 * http_response_abort). */
struct stream *http_request_upgrade(http_request_t *req, const char *protocol, const char *headers,
                                    size_t headers_len, buf_t *early);
/* The handler closed the stream it took: the connection goes away. */
void http_request_upgrade_end(http_request_t *req);

/* A whole response with a JSON body. */
void http_respond_json(http_request_t *req, int status, const char *json, size_t len);
/* {"error":{"message":...,"type":...}} */
void http_respond_error(http_request_t *req, int status, const char *type, const char *message);
/* The same with extra "Name: value\r\n" header lines. */
void http_respond_error_with(http_request_t *req, int status, const char *type, const char *message,
                             const char *headers, size_t headers_len);

#endif
