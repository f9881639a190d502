/* fast_upstream.c: a canned-response HTTP/1.1 upstream for throughput benchmarks, so the
 * numbers measure the proxy and not a Python mock. Answers every request (GET, no body) with
 * the same small chat.completion JSON over keep-alive. Not a test; run by bench_proxy.sh.
 * Usage: fast_upstream PORT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 155\r\n\r\n"
    "{\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"message\":{\"content\":"
    "\"hello\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}   ";

typedef struct {
    uv_tcp_t tcp;
    int tail; /* how much of "\r\n\r\n" the previous read ended with */
} client_t;

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
    static char buf[65536];
    b->base = buf;
    b->len = sizeof(buf);
}

static void on_close(uv_handle_t *h) {
    free(h);
}

static void on_written(uv_write_t *w, int status) {
    free(w);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    client_t *c = (client_t *)s;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    static const char end[] = "\r\n\r\n";
    int requests = 0;
    for (ssize_t i = 0; i < n; i++) {
        c->tail = b->base[i] == end[c->tail] ? c->tail + 1 : (b->base[i] == '\r' ? 1 : 0);
        if (c->tail == 4) {
            requests++;
            c->tail = 0;
        }
    }
    for (int i = 0; i < requests; i++) {
        uv_write_t *w = malloc(sizeof(*w));
        uv_buf_t out = uv_buf_init((char *)RESPONSE, sizeof(RESPONSE) - 1);
        uv_write(w, s, &out, 1, on_written);
    }
}

static void on_conn(uv_stream_t *server, int status) {
    client_t *c = calloc(1, sizeof(*c));
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0)
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    else
        uv_close((uv_handle_t *)&c->tcp, on_close);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(uv_default_loop(), &server);
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    if (uv_tcp_bind(&server, (struct sockaddr *)&addr, 0) ||
        uv_listen((uv_stream_t *)&server, 1024, on_conn)) {
        fprintf(stderr, "cannot listen\n");
        return 1;
    }
    return uv_run(uv_default_loop(), UV_RUN_DEFAULT);
}
