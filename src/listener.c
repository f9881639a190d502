/* listener.c: the listening socket of one event loop.
 *
 * Owns: binding (address, name or the IPv6/IPv4 fallback), accepting (TLS set up through
 * stream.c), refusing past config_current(ctx)->max_connections, stopping accepting at
 * shutdown, the counts of connections and active requests, and the server's lifetime.
 * Must not: parse HTTP (http1_server.c), know any handler (router.c holds them), or block
 * once the loop runs (the one name lookup happens at start-up, before anything else runs). */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "route/config.h"
#include "route/server.h"

static void on_connection(uv_stream_t *listener, int status) {
    server_t *srv = listener->data;
    if (status < 0) {
        route_log_limited(&srv->accept_log, LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    stream_t *s =
        stream_accept(srv->env, listener, srv->ctx->tls_server, http1_stream_callbacks(), NULL);
    if (!s) return;
    int64_t limit = config_current(srv->ctx)->max_connections;
    if (srv->n_conns >= (size_t)limit) {
        route_log_limited(&srv->limit_log, LOG_WARN,
                          "connection limit %lld reached, refusing a client", (long long)limit);
        stream_close(s);
        return;
    }
    http1_conn_start(srv, s);
}

static int listen_on(server_t *srv, const struct sockaddr *addr) {
    uv_tcp_init(srv->ctx->loop, &srv->listener);
    srv->listener.data = srv;
    int rc = uv_tcp_bind(&srv->listener, addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    return rc;
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
    ctx->server = srv;
    http1_server_init(srv);

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
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_run(ctx->loop, UV_RUN_NOWAIT);
        uv_ip4_addr("0.0.0.0", port, (struct sockaddr_in *)&ss);
        rc = listen_on(srv, (struct sockaddr *)&ss);
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
    stream_env_free(srv->env);
    free(srv);
    ctx->server = NULL;
}
