/* http_internal.h (private to the HTTP core: listener.c, http1_server.c): the server and
 * request structs. Handlers never see these; they use the accessors of route/http.h. */
#ifndef ROUTE_HTTP_INTERNAL_H
#define ROUTE_HTTP_INTERNAL_H

#include <llhttp.h>

#include "route/ctx.h"
#include "route/http.h"
#include "route/router.h"
#include "route/stream.h"

typedef struct server_conn server_conn_t;

struct server {
    route_ctx_t *ctx;
    const router_t *router;
    stream_env_t *env;
    /* Accepting is ours, not libuv's: when descriptors run out, libuv's own reserve trick
     * closes waiting clients without a word, where we answer them 503. */
    uv_poll_t listen_poll;
    uv_timer_t accept_pause; /* after running out of descriptors */
    int listen_fd, spare_fd;
    int listening, accept_paused;
    int64_t fd_limit, fd_fit_connections; /* max_connections when not configured */
    buf_t shed_response;                  /* the 503 for clients we cannot serve */
    llhttp_settings_t settings;
    server_conn_t *conns; /* intrusive list of open connections */
    size_t n_conns, active_requests;
    /* Response heads wait for their first body bytes so both leave in one write; the check
     * phase (after all I/O callbacks of a loop iteration) sends the heads nothing followed. */
    uv_check_t head_check;
    server_conn_t *heads_waiting;
    http_request_t *free_reqs; /* recycled request objects, up to a ceiling */
    size_t n_free_reqs;
    server_conn_t *free_conns; /* recycled connection objects, up to a ceiling */
    size_t n_free_conns;
    log_limiter_t accept_log, limit_log; /* per-connection warnings, rate-limited */
    log_limiter_t send_timeout_log, emfile_log;
};

struct http_request {
    arena_t arena; /* request-scoped memory, freed with the request */
    unsigned refs;
    server_conn_t *conn; /* NULL once the client is gone */
    struct server *srv;
    struct route_ctx *ctx;

    int method;              /* llhttp_method_t */
    const char *method_name; /* "POST" */
    char *target;            /* as received */
    char *path;              /* target before '?', not decoded */
    char *query;             /* after '?', or NULL */
    int http_major, http_minor;
    route_header_t *headers;
    size_t n_headers;
    buf_t body;
    int keep_alive;
    int upgrade; /* asked to switch protocols (llhttp's parser->upgrade) */
    char client_ip[64];
    int64_t start_mono_ns, start_wall_ns;

    int response_started, response_done, response_chunked, response_close;
    int status;
    uint64_t body_bytes_sent;
    int logs_itself; /* its handler writes its access log line (else the server does) */

    void *handler_data;
    const char *abort_reason; /* static text, set before on_abort */
    http_request_cb on_abort;
    http_request_cb on_drain;
    http_request_t *next_free;
};

/* http1_server.c, for the listener. */
void http1_server_init(server_t *srv);
void http1_server_release(server_t *srv); /* free lists */
/* The callbacks an accepted stream starts with; http1_conn_start attaches the connection
 * before the loop can deliver anything. */
const stream_callbacks_t *http1_stream_callbacks(void);
void http1_conn_start(server_t *srv, stream_t *stream);
/* Closes connections with nothing to finish (no request being read or answered). */
void http1_close_idle(server_t *srv);
void http1_close_all(server_t *srv);
/* For tests/fuzz/fuzz_request.c: bytes (nread > 0) or the peer's close or an error (nread < 0)
 * delivered to the server's newest connection as its stream delivers what it reads, so a
 * fuzzer chooses how the bytes are cut without writing them to a socket. 0, or -1 when no
 * connection is open or it is closing. */
int http1_server_feed_for_fuzz(server_t *srv, const char *data, ssize_t nread);
/* Bytes the newest connection has queued to its client and not yet written (0: none open). */
size_t http1_server_queued_for_fuzz(server_t *srv);

#endif
