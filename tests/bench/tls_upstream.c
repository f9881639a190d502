/* tls_upstream.c: a canned-response HTTPS/1.1 upstream for the TLS benchmarks, so the numbers
 * measure the proxy and not a Python mock. TLS is the project's own src/tls.c (mbedTLS over
 * memory BIOs) in its server role. Every request (no body expected) gets the same small
 * chat.completion JSON. Not a test; run by bench_tls.sh.
 *
 * Usage: tls_upstream PORT CERT KEY [keepalive|close] [DELAY_MS] [BODY_BYTES]
 *   CERT KEY   PEM files; "-" "-" serves plain HTTP (the baseline for memory numbers)
 *   keepalive  answers on one connection for as long as the client likes (default)
 *   close      "Connection: close" and a close after each response: a handshake per request
 *   DELAY_MS   holds each answer that long (so concurrent requests need their own connection)
 *   BODY_BYTES pads the JSON body to that size (a big answer fills the proxy's read buffers) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "route/tls.h"

static const char BODY[] =
    "{\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"message\":{\"content\":"
    "\"hello\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

static tls_config_t *cfg;
static int close_after;
static uint64_t delay_ms;
static char *response;
static size_t response_len;

typedef struct client {
    uv_tcp_t tcp;
    uv_timer_t timer;
    tls_conn_t *tls;
    int ready, tail, waiting, closing, handles;
} client_t;

typedef struct {
    uv_write_t w;
    buf_t bytes;
} out_t;

static void on_closed(uv_handle_t *h) {
    client_t *c = h->data;
    if (--c->handles) return;
    tls_conn_free(c->tls);
    free(c);
}

static void client_close(client_t *c) {
    if (c->closing) return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

static void on_written(uv_write_t *w, int status) {
    out_t *o = (out_t *)w;
    buf_free(&o->bytes);
    free(o);
}

static void send_plain(client_t *c, const char *data, size_t len) {
    out_t *o = calloc(1, sizeof(*o));
    buf_append(&o->bytes, data, len);
    uv_buf_t b = uv_buf_init(o->bytes.data, (unsigned)o->bytes.len);
    if (uv_write(&o->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        buf_free(&o->bytes);
        free(o);
        client_close(c);
    }
}

static void flush(client_t *c) {
    buf_t *pending = tls_pending_out(c->tls);
    if (!pending->len) return;
    out_t *o = malloc(sizeof(*o));
    o->bytes = *pending;
    memset(pending, 0, sizeof(*pending));
    uv_buf_t b = uv_buf_init(o->bytes.data, (unsigned)o->bytes.len);
    if (uv_write(&o->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        buf_free(&o->bytes);
        free(o);
        client_close(c);
    }
}

static void answer(client_t *c) {
    if (c->closing) return;
    if (c->tls) {
        tls_write(c->tls, response, response_len);
        flush(c);
    } else {
        send_plain(c, response, response_len);
    }
    if (close_after) client_close(c); /* pending writes complete before the close */
}

static void on_delay(uv_timer_t *t) {
    client_t *c = t->data;
    for (; c->waiting > 0; c->waiting--)
        answer(c);
}

/* One answer per request head ("\r\n\r\n"); requests carry no body. */
static void scan(client_t *c, const char *p, size_t n) {
    static const char end[] = "\r\n\r\n";
    for (size_t i = 0; i < n; i++) {
        c->tail = p[i] == end[c->tail] ? c->tail + 1 : (p[i] == '\r' ? 1 : 0);
        if (c->tail < 4) continue;
        c->tail = 0;
        if (delay_ms) {
            if (c->waiting++ == 0) uv_timer_start(&c->timer, on_delay, delay_ms, 0);
        } else {
            answer(c);
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
    static char buf[65536];
    b->base = buf;
    b->len = sizeof(buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    client_t *c = s->data;
    if (n < 0) {
        client_close(c);
        return;
    }
    if (n == 0 || c->closing) return;
    char err[300], plain[16384];
    if (!c->tls) {
        scan(c, b->base, (size_t)n);
        return;
    }
    tls_feed(c->tls, b->base, (size_t)n);
    if (!c->ready) {
        int hs = tls_handshake(c->tls, err, sizeof(err));
        flush(c);
        if (hs < 0) {
            client_close(c);
            return;
        }
        if (hs == 0) return;
        c->ready = 1;
    }
    for (;;) {
        ssize_t m = tls_read(c->tls, plain, sizeof(plain), err, sizeof(err));
        if (m < 0) {
            client_close(c);
            return;
        }
        if (m == 0) return;
        scan(c, plain, (size_t)m);
    }
}

static void on_conn(uv_stream_t *server, int status) {
    client_t *c = calloc(1, sizeof(*c));
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        (cfg && !(c->tls = tls_conn_new(cfg, NULL, NULL)))) {
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT CERT KEY [keepalive|close] [DELAY_MS]\n", argv[0]);
        return 2;
    }
    close_after = argc > 4 && strcmp(argv[4], "close") == 0;
    delay_ms = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    char *err = NULL;
    int plain = strcmp(argv[2], "-") == 0;
    cfg = plain ? NULL : tls_server_config_new(argv[2], argv[3], &err);
    if (!plain && !cfg) {
        fprintf(stderr, "%s\n", err ? err : "TLS set-up failed");
        return 1;
    }
    size_t body_len = argc > 6 ? strtoull(argv[6], NULL, 10) : 0;
    if (body_len < sizeof(BODY) - 1) body_len = sizeof(BODY) - 1;
    response = malloc(body_len + 256);
    int head = snprintf(response, 256,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n%s\r\n",
                        body_len, close_after ? "Connection: close\r\n" : "");
    memcpy(response + head, BODY, sizeof(BODY) - 1);
    memset(response + head + sizeof(BODY) - 1, ' ', body_len - (sizeof(BODY) - 1)); /* JSON-legal */
    response_len = (size_t)head + body_len;
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(uv_default_loop(), &server);
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    if (uv_tcp_bind(&server, (struct sockaddr *)&addr, 0) ||
        uv_listen((uv_stream_t *)&server, 1024, on_conn)) {
        fprintf(stderr, "cannot listen on %s\n", argv[1]);
        return 1;
    }
    return uv_run(uv_default_loop(), UV_RUN_DEFAULT);
}
