/* fast_upstream.c: a canned-answer HTTP/1.1 upstream for benchmarks and load tests, so the
 * numbers measure the proxy and not a Python mock.
 *
 * Owns: answering every complete request on a keep-alive connection, in order, with one of
 * two answers built once at start-up: a 613-byte `chat.completion` JSON (Content-Length), or,
 * when the request body has `"stream":true` (or `"stream": true`) or the query has `stream=`,
 * a 40-chunk `chat.completion.chunk` SSE stream of about 12.8 KB ending in `data: [DONE]`
 * (chunked, as OpenAI sends it).
 * Must not: read request bodies with Transfer-Encoding (it closes such connections), keep more
 * than 1 MiB of one connection's unanswered input, or touch the proxy's code (it is a client
 * of nothing; tests/bench/loadgen.c and tests/integration/test_load_records.py drive it).
 *
 * Usage: fast_upstream PORT   (PORT 0: any free port). Prints "port N" on stdout once it
 * listens, so a caller learns the port without racing for it.
 *        fast_upstream --print json|sse   prints that body (no HTTP framing) and exits:
 *        tests/bench/bench.sh serves the same bytes from its nginx mock. */
#define _GNU_SOURCE /* memmem */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define MAX_PENDING (1u << 20)
#define SSE_EVENTS  40

typedef struct {
    char *json, *sse;
} text_body_t;

typedef struct {
    char *json;
    size_t json_len;
    char *sse;
    size_t sse_len;
    text_body_t bodies; /* the two bodies without HTTP framing, for --print */
} answers_t;

typedef struct {
    uv_tcp_t tcp;
    char *buf;
    size_t len, cap;
    const answers_t *answers;
} client_t;

/* A buffer that grows; the answers are built once, so failing to allocate is fatal. */
typedef struct {
    char *p;
    size_t len, cap;
} text_t;

static void text_add(text_t *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        if (!t->p) abort();
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = 0;
}

static void text_printf(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_printf(text_t *t, const char *fmt, ...) {
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    text_add(t, tmp, (size_t)n);
}

static void build_answers(answers_t *a) {
    /* The JSON: a chat.completion padded (inside message.content) to 613 bytes. */
    static const char head[] =
        "{\"id\":\"chatcmpl-bench0000000000000000000001\",\"object\":\"chat.completion\","
        "\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"";
    static const char tail[] =
        "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":"
        "{\"prompt_tokens\":19,\"completion_tokens\":96,\"total_tokens\":115},"
        "\"system_fingerprint\":\"fp_0ba0d124f1\"}";
    text_t body = {0};
    text_add(&body, head, sizeof(head) - 1);
    size_t pad = 613 - (sizeof(head) - 1) - (sizeof(tail) - 1);
    static const char words[] = "Hello! This is a canned answer from the benchmark upstream. ";
    for (size_t i = 0; i < pad; i++)
        text_add(&body, &words[i % (sizeof(words) - 1)], 1);
    text_add(&body, tail, sizeof(tail) - 1);
    text_t json = {0};
    text_printf(&json,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                "\r\n",
                body.len);
    text_add(&json, body.p, body.len);
    a->bodies.json = body.p;
    a->json = json.p;
    a->json_len = json.len;

    /* The SSE stream: role chunk, content chunks, finish chunk with usage, [DONE]. */
    text_t sse = {0};
    text_add(&sse,
             "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             "Transfer-Encoding: chunked\r\n\r\n",
             strlen("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: "
                    "no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"));
    text_t plain = {0};
    for (int i = 0; i < SSE_EVENTS; i++) {
        text_t ev = {0};
        if (i < SSE_EVENTS - 1)
            text_printf(&ev,
                        "data: {\"id\":\"chatcmpl-bench0000000000000000000001\",\"object\":"
                        "\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
                        "\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\","
                        "\"choices\":[{\"index\":0,\"delta\":{%s\"content\":\"word %02d of the "
                        "canned benchmark stream, padded \"},"
                        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
                        i == 0 ? "\"role\":\"assistant\"," : "", i);
        else
            text_printf(&ev, "data: {\"id\":\"chatcmpl-bench0000000000000000000001\",\"object\":"
                             "\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
                             "\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\","
                             "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                             "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":19,"
                             "\"completion_tokens\":39,\"total_tokens\":58}}\n\ndata: [DONE]\n\n");
        text_printf(&sse, "%zx\r\n", ev.len);
        text_add(&sse, ev.p, ev.len);
        text_add(&sse, "\r\n", 2);
        text_add(&plain, ev.p, ev.len);
        free(ev.p);
    }
    text_add(&sse, "0\r\n\r\n", 5);
    a->sse = sse.p;
    a->sse_len = sse.len;
    a->bodies.sse = plain.p;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    client_t *c = h->data;
    if (c->cap - c->len < 16384) {
        size_t cap = c->cap ? c->cap * 2 : 65536;
        char *p = realloc(c->buf, cap);
        if (!p) {
            *b = uv_buf_init(NULL, 0);
            return;
        }
        c->buf = p;
        c->cap = cap;
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_close(uv_handle_t *h) {
    client_t *c = h->data;
    free(c->buf);
    free(c);
}

static void on_written(uv_write_t *w, int status) {
    free(w);
}

/* The value of header `name` in the head [p, end), or NULL. */
static const char *find_header(const char *p, const char *end, const char *name) {
    size_t n = strlen(name);
    const char *line = memchr(p, '\n', (size_t)(end - p));
    while (line && line + 1 < end) {
        line++;
        if ((size_t)(end - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            return v;
        }
        line = memchr(line, '\n', (size_t)(end - line));
    }
    return NULL;
}

static int wants_stream(const char *head, size_t head_len, const char *body, size_t body_len) {
    const char *eol = memchr(head, '\n', head_len);
    size_t first = eol ? (size_t)(eol - head) : head_len;
    if (memmem(head, first, "stream=", 7)) return 1;
    return memmem(body, body_len, "\"stream\":true", 13) != NULL ||
           memmem(body, body_len, "\"stream\": true", 14) != NULL;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    client_t *c = s->data;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    c->len += (size_t)n;
    size_t off = 0;
    for (;;) {
        const char *start = c->buf + off;
        size_t avail = c->len - off;
        const char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t head_len = (size_t)(end - start) + 4;
        if (find_header(start, end + 2, "transfer-encoding")) {
            uv_close((uv_handle_t *)s, on_close);
            return;
        }
        const char *cl = find_header(start, end + 2, "content-length");
        size_t body_len = cl ? strtoul(cl, NULL, 10) : 0;
        if (body_len > MAX_PENDING) {
            uv_close((uv_handle_t *)s, on_close);
            return;
        }
        if (avail < head_len + body_len) break;
        int sse = wants_stream(start, head_len, start + head_len, body_len);
        uv_write_t *w = malloc(sizeof(*w));
        if (!w) abort();
        uv_buf_t out = sse ? uv_buf_init(c->answers->sse, (unsigned)c->answers->sse_len)
                           : uv_buf_init(c->answers->json, (unsigned)c->answers->json_len);
        if (uv_write(w, s, &out, 1, on_written)) {
            free(w);
            uv_close((uv_handle_t *)s, on_close);
            return;
        }
        off += head_len + body_len;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    if (c->len > MAX_PENDING) uv_close((uv_handle_t *)s, on_close);
}

static void on_conn(uv_stream_t *server, int status) {
    if (status < 0) return;
    client_t *c = calloc(1, sizeof(*c));
    if (!c) abort();
    c->answers = server->data;
    c->tcp.data = c;
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    } else {
        uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fast_upstream PORT\n");
        return 2;
    }
    answers_t answers;
    build_answers(&answers);
    if (strcmp(argv[1], "--print") == 0 && argc == 3) {
        fputs(strcmp(argv[2], "sse") == 0 ? answers.bodies.sse : answers.bodies.json, stdout);
        return 0;
    }
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(uv_default_loop(), &server);
    server.data = &answers;
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    if (uv_tcp_bind(&server, (struct sockaddr *)&addr, 0) ||
        uv_listen((uv_stream_t *)&server, 4096, on_conn)) {
        fprintf(stderr, "fast_upstream: cannot listen on port %s\n", argv[1]);
        return 1;
    }
    struct sockaddr_in bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
    printf("port %d\n", ntohs(bound.sin_port));
    fflush(stdout);
    return uv_run(uv_default_loop(), UV_RUN_DEFAULT);
}
