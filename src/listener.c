/* listener.c: the listening socket of one event loop.
 *
 * Owns: binding (address, name or the IPv6/IPv4 fallback), accepting (the socket is then
 * handed to stream.c, which sets up TLS), the descriptor limit (the soft RLIMIT_NOFILE raised
 * to the hard one, max_connections fitted to it when not configured, a spare descriptor to
 * answer 503 when they run out, and a pause), refusing past max_connections with a 503,
 * stopping accepting at shutdown, the counts of connections and active requests, and the
 * server's lifetime.
 * Must not: parse HTTP (http1_server.c), know any handler (router.c holds them), or block
 * once the loop runs (the one name lookup happens at start-up, before anything else runs). */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_internal.h"
#include "route/config.h"
#include "route/server.h"

/* Descriptors kept for what is not a client stream: the database and its WAL files, the
 * loop's own, the threads' pipes, the file watch, logs, the spare. */
#define FD_RESERVE       64
#define ACCEPT_PAUSE_MS  100
#define ACCEPTS_PER_WAKE 128

/* Raises the soft RLIMIT_NOFILE to the hard limit (said once); returns the soft limit. */
static int64_t raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    rlim_t was = rl.rlim_cur;
    rlim_t want = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != was)
        route_log(LOG_INFO, "file descriptors: soft limit raised from %llu to the hard limit %llu",
                  (unsigned long long)was, (unsigned long long)rl.rlim_cur);
    else
        route_log(LOG_INFO, "file descriptors: limit %llu", (unsigned long long)rl.rlim_cur);
    return (int64_t)rl.rlim_cur;
}

static int64_t connection_limit(server_t *srv) {
    const route_config_t *cfg = config_current(srv->ctx);
    if (cfg->max_connections_set || cfg->max_connections < srv->fd_fit_connections)
        return cfg->max_connections;
    return srv->fd_fit_connections;
}

/* A client we cannot serve gets a 503 it can read, never a silent close. The socket is
 * fresh, so the few hundred bytes fit its send buffer; a TLS client could not read it. */
static void answer_503_and_close(server_t *srv, int fd) {
    if (!srv->ctx->tls_server && srv->shed_response.len) {
        ssize_t n = send(fd, srv->shed_response.data, srv->shed_response.len, MSG_NOSIGNAL);
        (void)n;
        shutdown(fd, SHUT_WR);
        /* A close with request bytes unread sends a reset, which can reach the client before
         * it read the answer: what already arrived is read and dropped first. */
        char drop[16 * 1024];
        for (int i = 0; i < 4 && recv(fd, drop, sizeof drop, MSG_DONTWAIT) > 0; i++)
            ;
    }
    close(fd);
}

static void on_listen_readable(uv_poll_t *h, int status, int events);

static void on_accept_resume(uv_timer_t *t) {
    server_t *srv = t->data;
    srv->accept_paused = 0;
    if (srv->listening) uv_poll_start(&srv->listen_poll, UV_READABLE, on_listen_readable);
}

/* Out of descriptors: the spare one makes room to accept each waiting client and answer it
 * 503, then accepting pauses briefly, so a client never waits on a connection nobody
 * answers and the loop does not spin on a listener it cannot serve. */
static void shed_clients(server_t *srv, int err) {
    size_t answered = 0;
    if (srv->spare_fd >= 0) {
        close(srv->spare_fd);
        srv->spare_fd = -1;
        for (;;) {
            int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                break;
            }
            answer_503_and_close(srv, fd);
            answered++;
        }
        srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    route_log_limited(&srv->emfile_log, LOG_WARN,
                      "accept: %s (RLIMIT_NOFILE %lld, %zu connections open): answered %zu "
                      "client(s) 503, accepting paused %d ms",
                      strerror(err), (long long)srv->fd_limit, srv->n_conns, answered,
                      ACCEPT_PAUSE_MS);
    srv->accept_paused = 1;
    uv_poll_stop(&srv->listen_poll);
    uv_timer_start(&srv->accept_pause, on_accept_resume, ACCEPT_PAUSE_MS, 0);
}

static void on_listen_readable(uv_poll_t *h, int status, int events) {
    server_t *srv = h->data;
    (void)events;
    if (status < 0) {
        route_log_limited(&srv->accept_log, LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPTS_PER_WAKE && srv->listening; i++) {
        int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) return;
            if (err == EINTR || err == ECONNABORTED) continue;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                shed_clients(srv, err);
                return;
            }
            route_log_limited(&srv->accept_log, LOG_WARN, "accept: %s", strerror(err));
            return;
        }
        int64_t limit = connection_limit(srv);
        if (srv->n_conns >= (size_t)limit) {
            route_log_limited(&srv->limit_log, LOG_WARN,
                              "connection limit %lld reached, answering a client 503",
                              (long long)limit);
            answer_503_and_close(srv, fd);
            continue;
        }
        stream_t *s =
            stream_adopt(srv->env, fd, srv->ctx->tls_server, http1_stream_callbacks(), NULL);
        if (s) http1_conn_start(srv, s);
    }
}

/* A non-blocking listening socket on addr: its descriptor, or a libuv error code. */
static int listen_socket(const struct sockaddr *addr) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    socklen_t len =
        addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, addr, len) != 0 || listen(fd, 1024) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

static int listen_on(server_t *srv, const struct sockaddr *addr) {
    int fd = listen_socket(addr);
    if (fd < 0) return fd;
    int rc = uv_poll_init_socket(srv->ctx->loop, &srv->listen_poll, fd);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    srv->listen_fd = fd;
    srv->listen_poll.data = srv;
    rc = uv_poll_start(&srv->listen_poll, UV_READABLE, on_listen_readable);
    if (rc != 0) {
        uv_close((uv_handle_t *)&srv->listen_poll, NULL);
        close(fd);
        srv->listen_fd = -1;
    }
    return rc;
}

/* The 503 given when descriptors or the connection limit run out, built once. */
static void build_shed_response(server_t *srv) {
    static const char body[] = "{\"error\":{\"message\":\"the server is at its connection "
                               "limit, try again\",\"type\":\"server_overloaded\"}}\n";
    size_t cors_len;
    const char *cors = router_response_headers(srv->router, NULL, &cors_len);
    buf_t *b = &srv->shed_response;
    buf_appends(b, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; "
                   "charset=utf-8\r\nRetry-After: 1\r\n");
    buf_append(b, cors, cors_len);
    buf_appends(b, "Content-Length: ");
    buf_append_i64(b, (int64_t)sizeof(body) - 1);
    buf_appends(b, "\r\nConnection: close\r\n\r\n");
    buf_append(b, body, sizeof(body) - 1);
}

static void fit_connections_to_fds(server_t *srv) {
    srv->fd_limit = raise_fd_limit();
    int64_t fit = (srv->fd_limit - FD_RESERVE) / 2; /* a stream takes two: client, upstream */
    srv->fd_fit_connections = fit < 8 ? 8 : fit;
    const route_config_t *cfg = config_current(srv->ctx);
    if (cfg->max_connections_set && cfg->max_connections > srv->fd_fit_connections)
        route_log(LOG_WARN,
                  "max_connections %lld is more than %lld descriptors allow (two a stream): "
                  "past that, descriptors run out and clients are answered 503",
                  (long long)cfg->max_connections, (long long)srv->fd_fit_connections);
    else
        route_log(LOG_INFO, "max_connections: %lld%s", (long long)connection_limit(srv),
                  cfg->max_connections_set ? "" : " (fits the descriptor limit, two a stream)");
}

int server_start(route_ctx_t *ctx, const router_t *router, char *err, size_t err_cap) {
    server_t *srv = calloc(1, sizeof(*srv));
    if (!srv || !(srv->env = stream_env_new(ctx->loop))) {
        free(srv);
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    srv->ctx = ctx;
    srv->router = router;
    srv->listen_fd = srv->spare_fd = -1;
    ctx->server = srv;
    http1_server_init(srv);
    uv_timer_init(ctx->loop, &srv->accept_pause);
    srv->accept_pause.data = srv;
    srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    build_shed_response(srv);
    fit_connections_to_fds(srv);

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
    int rc = listen_on(srv, (struct sockaddr *)&ss);
    if (rc != 0 && host[0] == '\0') {
        /* No IPv6 on this machine: all IPv4 interfaces then. */
        uv_ip4_addr("0.0.0.0", port, (struct sockaddr_in *)&ss);
        rc = listen_on(srv, (struct sockaddr *)&ss);
    }
    if (rc != 0) {
        snprintf(err, err_cap, "listen on %s: %s", ctx->opts->addr, uv_strerror(rc));
        return -1;
    }
    srv->listening = 1;
    return 0;
}

void server_stop_accepting(route_ctx_t *ctx) {
    server_t *srv = ctx->server;
    if (!srv || !srv->listening) return;
    srv->listening = 0;
    uv_close((uv_handle_t *)&srv->accept_pause, NULL);
    uv_close((uv_handle_t *)&srv->listen_poll, NULL);
    close(srv->listen_fd);
    srv->listen_fd = -1;
    http1_close_idle(srv); /* idle keep-alive connections have nothing to finish */
}

size_t server_active_requests(route_ctx_t *ctx) {
    return ctx->server ? ctx->server->active_requests : 0;
}

size_t server_open_connections(route_ctx_t *ctx) {
    return ctx->server ? ctx->server->n_conns : 0;
}

void server_close_all(route_ctx_t *ctx) {
    if (ctx->server) http1_close_all(ctx->server);
}

void server_free(route_ctx_t *ctx) {
    server_t *srv = ctx->server;
    if (!srv) return;
    http1_server_release(srv);
    if (srv->spare_fd >= 0) close(srv->spare_fd);
    buf_free(&srv->shed_response);
    stream_env_free(srv->env);
    free(srv);
    ctx->server = NULL;
}
