/* test_stream.c: a loopback pair of streams (plain TCP): iovec writes arrive in order, bytes
 * outside the ref survive the caller reusing them, a large write queues, reports pending and
 * fires on_drain, read pause/resume, shutdown reaches the peer as EOF, close needs no
 * callback. Bounded: a timer stops the loop after 10 s. */
#include <stdlib.h>
#include <string.h>

#include "route/stream.h"
#include "testlib.h"

#define BIG (8 * 1024 * 1024)

typedef struct fixture {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_timer_t guard;
    stream_env_t *env;
    stream_t *client, *server;
    int opened, open_status, drains, shutdowns, eof;
    buf_t got;
    size_t expect;
    int paused_once;
} fixture_t;

static fixture_t F;

static void stop_all(void) {
    if (F.client) stream_close(F.client);
    if (F.server) stream_close(F.server);
    F.client = F.server = NULL;
    uv_close((uv_handle_t *)&F.listener, NULL);
    uv_close((uv_handle_t *)&F.guard, NULL);
}

static void on_guard(uv_timer_t *t) {
    fprintf(stderr, "test_stream: timed out\n");
    test_failed++;
    stop_all();
}

static void resume_later(uv_timer_t *t) {
    if (F.server) stream_read_start(F.server);
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void server_read(stream_t *s, ssize_t n, const char *data, refbuf_t *ref) {
    if (n < 0) {
        F.eof = n == UV_EOF;
        stop_all();
        return;
    }
    CHECK(ref != NULL && data >= ref->data && data + n <= ref->data + ref->cap);
    buf_append(&F.got, data, (size_t)n);
    if (!F.paused_once && F.got.len > 1024 * 1024) {
        /* Pause reading for a moment: the client's queue grows, then drains. */
        F.paused_once = 1;
        stream_read_stop(s);
        uv_timer_t *t = malloc(sizeof(*t));
        uv_timer_init(&F.loop, t);
        uv_timer_start(t, resume_later, 50, 0);
    }
}

static void client_drain(stream_t *s) {
    F.drains++;
}

static void client_shutdown(stream_t *s) {
    F.shutdowns++;
}

static void client_read(stream_t *s, ssize_t n, const char *data, refbuf_t *ref) {}

static void client_open(stream_t *s, int status) {
    F.opened = 1;
    F.open_status = status;
    if (status) {
        stop_all();
        return;
    }
    stream_set_watermarks(s, 256 * 1024, 64 * 1024);
    /* Three pieces: static text, caller scratch (overwritten right after), bytes in a ref. */
    char scratch[16];
    memcpy(scratch, "-scratch-", 9);
    refbuf_t *big = refbuf_new(BIG);
    for (size_t i = 0; i < BIG; i++)
        big->data[i] = (char)('a' + i % 26);
    big->len = BIG;
    uv_buf_t bufs[3] = {uv_buf_init((char *)"HEAD", 4), uv_buf_init(scratch, 9),
                        uv_buf_init(big->data, BIG)};
    CHECK(stream_write(s, bufs, 3, big) == 0);
    memset(scratch, 'X', sizeof(scratch));
    refbuf_release(big);          /* the stream holds its own reference */
    CHECK(stream_pending(s) > 0); /* 8 MiB does not fit a loopback socket buffer at once */
    uv_buf_t tail = uv_buf_init((char *)"TAIL", 4);
    CHECK(stream_write(s, &tail, 1, NULL) == 0);
    F.expect = 4 + 9 + BIG + 4;
    stream_shutdown(s);
    CHECK(stream_write(s, &tail, 1, NULL) == -1); /* nothing after shutdown */
}

static const stream_callbacks_t server_cb = {.on_read = server_read};
static const stream_callbacks_t client_cb = {.on_read = client_read,
                                             .on_open = client_open,
                                             .on_drain = client_drain,
                                             .on_shutdown = client_shutdown};

static void on_connection(uv_stream_t *l, int status) {
    CHECK(status == 0);
    F.server = stream_accept(F.env, l, NULL, &server_cb, NULL);
    CHECK(F.server != NULL);
}

int main(void) {
    uv_loop_init(&F.loop);
    F.env = stream_env_new(&F.loop);
    uv_tcp_init(&F.loop, &F.listener);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    CHECK(uv_tcp_bind(&F.listener, (struct sockaddr *)&sa, 0) == 0);
    CHECK(uv_listen((uv_stream_t *)&F.listener, 8, on_connection) == 0);
    int len = sizeof(sa);
    uv_tcp_getsockname(&F.listener, (struct sockaddr *)&sa, &len);
    uv_timer_init(&F.loop, &F.guard);
    uv_timer_start(&F.guard, on_guard, 10000, 0);
    int err = 0;
    F.client =
        stream_connect(F.env, (struct sockaddr *)&sa, NULL, NULL, NULL, &client_cb, NULL, &err);
    CHECK(F.client != NULL && err == 0);
    uv_run(&F.loop, UV_RUN_DEFAULT);

    CHECK(F.opened && F.open_status == 0);
    CHECK(F.eof);
    CHECK(F.shutdowns == 1);
    CHECK(F.drains >= 1);
    CHECK(F.got.len == F.expect);
    if (F.got.len == F.expect) {
        CHECK(memcmp(F.got.data, "HEAD-scratch-", 13) == 0);
        int ok = 1;
        for (size_t i = 0; i < BIG && ok; i++)
            ok = F.got.data[13 + i] == (char)('a' + i % 26);
        CHECK(ok);
        CHECK(memcmp(F.got.data + 13 + BIG, "TAIL", 4) == 0);
    }
    buf_free(&F.got);
    stream_env_free(F.env);
    CHECK(uv_loop_close(&F.loop) == 0);

    /* A refused connection reports through on_open, not from inside stream_connect. */
    memset(&F, 0, sizeof(F));
    uv_loop_init(&F.loop);
    F.env = stream_env_new(&F.loop);
    uv_tcp_init(&F.loop, &F.listener);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&F.listener, (struct sockaddr *)&sa, 0);
    len = sizeof(sa);
    uv_tcp_getsockname(&F.listener, (struct sockaddr *)&sa, &len); /* bound, not listening */
    uv_timer_init(&F.loop, &F.guard);
    uv_timer_start(&F.guard, on_guard, 10000, 0);
    F.client =
        stream_connect(F.env, (struct sockaddr *)&sa, NULL, NULL, NULL, &client_cb, NULL, &err);
    CHECK(F.client != NULL && !F.opened);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    CHECK(F.opened && F.open_status == UV_ECONNREFUSED);
    stream_env_free(F.env);
    CHECK(uv_loop_close(&F.loop) == 0);
    return TEST_DONE();
}
