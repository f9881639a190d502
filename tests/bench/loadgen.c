/* loadgen.c: a closed-loop HTTP/1.1 load generator that sends an exact number of requests and
 * counts every answer, for tests that must know how many requests the proxy served (wrk stops
 * on a clock and cuts requests in flight).
 *
 * Owns: C keep-alive connections to one 127.0.0.1 port, each sending its next POST when the
 * previous answer is complete, until N requests are sent; parsing every answer with llhttp;
 * one summary line on stdout.
 * Must not: send more than N requests, run past its time limit, or retry a request silently
 * (a connection lost with a request in flight counts as an error and is reopened).
 *
 * Usage: loadgen -port P [-n 20000] [-c 32] [-token T] [-path /v1/chat/completions]
 *                [-sse-every K] [-timeout SECONDS]
 *   Every K-th request (K=2: every other one; 0: none) asks for a stream ("stream":true).
 * Output: "sent=N answered=N status_2xx=N other_status=N sse_done=N sse=N errors=N
 *          seconds=S rps=R"; exit 0 when every request got a 2xx answer (and every stream ended
 *          with `data: [DONE]`), 1 otherwise, 2 on bad usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DONE_MARK     "data: [DONE]"
#define DONE_MARK_LEN (sizeof(DONE_MARK) - 1)

typedef struct run run_t;

typedef struct {
    run_t *run;
    int fd;
    llhttp_t parser;
    llhttp_settings_t *settings;
    int in_flight;   /* a request was sent and its answer is not complete */
    int is_sse;      /* the request in flight asked for a stream */
    char tail[32];   /* the last bytes of the body, to see "data: [DONE]" */
    size_t tail_len; /* how many of tail are valid */
    const char *out; /* request bytes still to write */
    size_t out_len;
} conn_t;

struct run {
    int port, epfd;
    long total, sent, answered, ok, other_status, sse_done, sse, errors;
    int sse_every;
    char *req_json, *req_sse;
    size_t req_json_len, req_sse_len;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *build_request(const char *path, const char *token, int stream, size_t *len) {
    char body[512];
    /* A typical small chat request: 190 bytes without the stream flag. */
    int bl = snprintf(body, sizeof(body),
                      "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":"
                      "\"You are a helpful assistant.\"},{\"role\":\"user\",\"content\":\"Say "
                      "hello to the benchmark in one short sentence, please.\"}],%s"
                      "\"max_tokens\":64,\"temperature\":0}",
                      stream ? "\"stream\":true," : "");
    char *req = malloc(2048);
    if (!req) abort();
    int n = snprintf(req, 2048,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     path, token, bl, body);
    *len = (size_t)n;
    return req;
}

static int on_headers_complete(llhttp_t *p) {
    conn_t *c = p->data;
    if (llhttp_get_status_code(p) / 100 == 2)
        c->run->ok++;
    else
        c->run->other_status++;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    conn_t *c = p->data;
    if (!c->is_sse) return 0;
    if (len >= sizeof(c->tail)) {
        memcpy(c->tail, at + len - sizeof(c->tail), sizeof(c->tail));
        c->tail_len = sizeof(c->tail);
    } else {
        size_t keep = c->tail_len + len > sizeof(c->tail) ? sizeof(c->tail) - len : c->tail_len;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        memcpy(c->tail + keep, at, len);
        c->tail_len = keep + len;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    conn_t *c = p->data;
    c->run->answered++;
    if (c->is_sse && memmem(c->tail, c->tail_len, DONE_MARK, DONE_MARK_LEN)) c->run->sse_done++;
    c->in_flight = 0;
    c->tail_len = 0;
    return 0;
}

static int conn_open(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->run->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    llhttp_init(&c->parser, HTTP_RESPONSE, c->settings);
    c->parser.data = c;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    return epoll_ctl(c->run->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->out_len = 0;
}

/* Queues the next request when there is one left. Returns 0 when nothing is left to send. */
static int conn_next(conn_t *c) {
    run_t *r = c->run;
    if (r->sent >= r->total) return 0;
    r->sent++;
    c->is_sse = r->sse_every > 0 && r->sent % r->sse_every == 0;
    if (c->is_sse) r->sse++;
    c->out = c->is_sse ? r->req_sse : r->req_json;
    c->out_len = c->is_sse ? r->req_sse_len : r->req_json_len;
    c->in_flight = 1;
    return 1;
}

static void conn_want(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(c->run->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The connection failed: the request in flight is an error; reopen for the rest. */
static void conn_fail(conn_t *c) {
    if (c->in_flight) c->run->errors++;
    c->in_flight = 0;
    conn_close(c);
    if (c->run->sent < c->run->total && conn_open(c) == 0 && conn_next(c)) return;
    conn_close(c);
}

static void conn_write(conn_t *c) {
    while (c->out_len > 0) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                conn_want(c, 1);
                return;
            }
            conn_fail(c);
            return;
        }
        c->out += n;
        c->out_len -= (size_t)n;
    }
    conn_want(c, 0);
}

static void conn_read(conn_t *c) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_fail(c);
            return;
        }
        if (n < 0) break;
        if (llhttp_execute(&c->parser, buf, (size_t)n) != HPE_OK) {
            fprintf(stderr, "loadgen: bad answer: %s\n", llhttp_get_error_reason(&c->parser));
            conn_fail(c);
            return;
        }
        if (!c->in_flight) {
            if (!conn_next(c)) {
                conn_close(c);
                return;
            }
            conn_write(c);
            return;
        }
    }
}

int main(int argc, char **argv) {
    run_t r = {.total = 20000, .sse_every = 2};
    int nconn = 32;
    double timeout = 60;
    const char *token = "bench", *path = "/v1/chat/completions";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-port"))
            r.port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-n"))
            r.total = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-c"))
            nconn = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-token"))
            token = argv[i + 1];
        else if (!strcmp(argv[i], "-path"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "-sse-every"))
            r.sse_every = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-timeout"))
            timeout = atof(argv[i + 1]);
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (argc % 2 == 0 || r.port <= 0 || r.port > 65535 || nconn <= 0 || r.total < 0 ||
        r.sse_every < 0) {
        fprintf(stderr, "usage: loadgen -port P [-n N] [-c C] [-token T] [-path P] "
                        "[-sse-every K] [-timeout S]\n");
        return 2;
    }
    r.req_json = build_request(path, token, 0, &r.req_json_len);
    r.req_sse = build_request(path, token, 1, &r.req_sse_len);
    r.epfd = epoll_create1(EPOLL_CLOEXEC);
    llhttp_settings_t settings;
    llhttp_settings_init(&settings);
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    conn_t *conns = calloc((size_t)nconn, sizeof(*conns));
    if (!conns || r.epfd < 0) return 1;
    double start = now_s();
    for (int i = 0; i < nconn; i++) {
        conns[i].run = &r;
        conns[i].settings = &settings;
        conns[i].fd = -1;
        if (!conn_next(&conns[i])) break;
        if (conn_open(&conns[i]) < 0) {
            perror("loadgen: connect");
            return 1;
        }
    }
    struct epoll_event evs[256];
    int timed_out = 0;
    while (r.answered + r.errors < r.sent || r.sent < r.total) {
        double left = start + timeout - now_s();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int n = epoll_wait(r.epfd, evs, 256, left > 1 ? 1000 : (int)(left * 1000) + 1);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) {
                conn_fail(c);
                continue;
            }
            if (evs[i].events & EPOLLOUT) conn_write(c);
            if (c->fd >= 0 && evs[i].events & EPOLLIN) conn_read(c);
        }
        int open = 0;
        for (int i = 0; i < nconn; i++)
            open += conns[i].fd >= 0;
        if (!open) break;
    }
    double secs = now_s() - start;
    for (int i = 0; i < nconn; i++)
        conn_close(&conns[i]);
    free(conns);
    free(r.req_json);
    free(r.req_sse);
    close(r.epfd);
    printf("sent=%ld answered=%ld status_2xx=%ld other_status=%ld sse_done=%ld sse=%ld "
           "errors=%ld seconds=%.3f rps=%.0f%s\n",
           r.sent, r.answered, r.ok, r.other_status, r.sse_done, r.sse, r.errors, secs,
           secs > 0 ? (double)r.answered / secs : 0.0, timed_out ? " timed_out=1" : "");
    int good = !timed_out && r.sent == r.total && r.answered == r.total && r.ok == r.total &&
               r.errors == 0 && r.sse_done == r.sse;
    return good ? 0 : 1;
}
