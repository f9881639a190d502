/* access_log.c: the access log, one line per request on standard error.
 *
 * Owns: the line formats (text and JSON Lines, fields in a fixed order) for /v1 exchanges
 * (access_log_request, from proxy.c) and every other request (access_log_http, from the
 * HTTP core), the bounded buffer
 * between the loop and the writer thread (past ACCESS_LOG_BUFFER_MAX bytes a line is dropped,
 * counted and reported rate-limited), and that thread, which writes at least every
 * ACCESS_LOG_FLUSH_MS and everything left at exit.
 * Must not: block the loop (it formats into memory and takes a mutex held only for a copy),
 * or write a key or a token: no header is logged, and of the target only the path (its
 * query can carry credentials, e.g. ?api-key=). */
#include "route/access_log.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "route/config.h"
#include "route/http.h"

#define ACCESS_LOG_BUFFER_MAX ((size_t)4 << 20)
#define ACCESS_LOG_FLUSH_MS   1000
/* The writer is woken before its tick once this much waits. */
#define ACCESS_LOG_WAKE_BYTES ((size_t)64 << 10)
/* Fields are cut so a line stays well under PIPE_BUF (4096), which a pipe writes whole: lines
 * from the log (route_log) never land inside one. */
#define PATH_MAX_LOGGED  1024
#define MODEL_MAX_LOGGED 256
#define WRITE_CHUNK      4096

struct access_log {
    int fd;
    enum access_log_format format;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    buf_t pending; /* complete lines; guarded by mu */
    int stop;      /* guarded by mu */
    uint64_t dropped;
    buf_t line;             /* loop thread: the line being formatted */
    log_limiter_t drop_log; /* loop thread */
};

/* ---------------------------------------------------------------- formatting */

static void append_ms(buf_t *b, int64_t ns) {
    if (ns < 0) ns = 0;
    char frac[8];
    buf_append_i64(b, ns / 1000000);
    snprintf(frac, sizeof(frac), ".%03d", (int)(ns / 1000 % 1000));
    buf_appends(b, frac);
}

static void append_time(buf_t *b, int64_t wall_ns) {
    time_t secs = (time_t)(wall_ns / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char text[40];
    size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(text + n, sizeof(text) - n, ".%03dZ", (int)(wall_ns / 1000000 % 1000));
    buf_appends(b, text);
}

static void append_string(buf_t *b, const char *s, size_t cap) {
    size_t n = s ? strlen(s) : 0;
    buf_append_json_string(b, s ? s : "", n < cap ? n : cap);
}

/* A field: JSON "name":value, or text name=value; the value as is (numbers) or NULL for a
 * missing one (null, or "-"). */
static void field(buf_t *b, enum access_log_format f, const char *name, int first) {
    if (f == ACCESS_LOG_JSON) {
        buf_appends(b, first ? "{\"" : ",\"");
        buf_appends(b, name);
        buf_append(b, "\":", 2);
    } else {
        buf_append(b, " ", 1);
        buf_appends(b, name);
        buf_append(b, "=", 1);
    }
}

static void missing(buf_t *b, enum access_log_format f) {
    buf_appends(b, f == ACCESS_LOG_JSON ? "null" : "-");
}

void access_log_format_line(enum access_log_format f, const route_req_t *req,
                            const route_res_t *res, buf_t *b) {
    const http_request_t *h = req->http;
    int json = f == ACCESS_LOG_JSON;
    if (json) {
        field(b, f, "time", 1);
        buf_append(b, "\"", 1);
        append_time(b, http_request_start_wall_ns(h));
        buf_append(b, "\"", 1);
    } else {
        append_time(b, http_request_start_wall_ns(h));
        buf_appends(b, " ACCESS");
    }
    field(b, f, "client_ip", 0);
    append_string(b, http_request_client_ip(h), 64);
    field(b, f, "method", 0);
    append_string(b, http_request_method(h), 32);
    field(b, f, "path", 0);
    append_string(b, http_request_path(h), PATH_MAX_LOGGED);
    field(b, f, "model", 0);
    const char *model = req->model ? req->model : res->model;
    if (model)
        append_string(b, model, MODEL_MAX_LOGGED);
    else
        missing(b, f);
    field(b, f, "status", 0);
    buf_append_i64(b, res->status);
    /* The upstream of the last attempt: the one that answered, or the last that failed. */
    field(b, f, "upstream_id", 0);
    if (res->n_attempts && res->attempts[res->n_attempts - 1].upstream_id)
        buf_append_i64(b, res->attempts[res->n_attempts - 1].upstream_id);
    else
        missing(b, f);
    field(b, f, "attempts", 0);
    buf_append_i64(b, (int64_t)res->n_attempts);
    field(b, f, "tried", 0);
    buf_appends(b, json ? "[" : res->n_attempts ? "" : "-");
    for (size_t i = 0; i < res->n_attempts; i++) {
        if (i) buf_append(b, ",", 1);
        buf_append_i64(b, res->attempts[i].upstream_id);
    }
    if (json) buf_append(b, "]", 1);
    field(b, f, "bytes_sent", 0);
    buf_append_i64(b, (int64_t)res->bytes_sent);
    field(b, f, "first_byte_ms", 0);
    if (res->ttfb_ns > 0)
        append_ms(b, res->ttfb_ns);
    else
        missing(b, f);
    field(b, f, "total_ms", 0);
    append_ms(b, res->elapsed_ns);
    field(b, f, "prompt_tokens", 0);
    if (res->has_usage && res->prompt_tokens >= 0)
        buf_append_i64(b, res->prompt_tokens);
    else
        missing(b, f);
    field(b, f, "completion_tokens", 0);
    if (res->has_usage && res->completion_tokens >= 0)
        buf_append_i64(b, res->completion_tokens);
    else
        missing(b, f);
    field(b, f, "request_id", 0);
    if (req->id[0])
        append_string(b, req->id, sizeof(req->id));
    else
        missing(b, f);
    buf_appends(b, json ? "}\n" : "\n");
}

/* ---------------------------------------------------------------- the writer */

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) { /* a non-blocking stderr: wait, in this thread */
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, ACCESS_LOG_FLUSH_MS);
        } else {
            return; /* stderr is gone: nothing to report it to */
        }
    }
}

/* Writes whole lines, at most WRITE_CHUNK bytes per write when they fit. */
static void write_lines(int fd, const char *p, size_t n) {
    while (n) {
        size_t take = n;
        if (take > WRITE_CHUNK) {
            take = WRITE_CHUNK;
            while (take && p[take - 1] != '\n')
                take--;
            if (!take) take = WRITE_CHUNK; /* one line longer than a chunk */
        }
        write_all(fd, p, take);
        p += take;
        n -= take;
    }
}

static void *writer_main(void *arg) {
    access_log_t *al = arg;
    buf_t out = {0};
    pthread_mutex_lock(&al->mu);
    for (;;) {
        while (!al->stop && al->pending.len < ACCESS_LOG_WAKE_BYTES) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)ACCESS_LOG_FLUSH_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            if (pthread_cond_timedwait(&al->wake, &al->mu, &until) != 0) break; /* the tick */
        }
        /* Swap the buffers: the loop appends to an empty one while this one is written. */
        buf_t full = al->pending;
        al->pending = out;
        al->pending.len = 0;
        int stop = al->stop;
        pthread_mutex_unlock(&al->mu);
        if (full.len) write_lines(al->fd, full.data, full.len);
        out = full;
        out.len = 0;
        if (out.cap > 2 * ACCESS_LOG_WAKE_BYTES) buf_free(&out); /* after a burst */
        pthread_mutex_lock(&al->mu);
        if (stop && al->pending.len == 0) break;
    }
    pthread_mutex_unlock(&al->mu);
    buf_free(&out);
    return NULL;
}

access_log_t *access_log_new(int fd, enum access_log_format format) {
    access_log_t *al = calloc(1, sizeof(*al));
    if (!al) return NULL;
    al->fd = fd;
    al->format = format;
    pthread_mutex_init(&al->mu, NULL);
    pthread_cond_init(&al->wake, NULL);
    if (pthread_create(&al->thread, NULL, writer_main, al) != 0) {
        pthread_cond_destroy(&al->wake);
        pthread_mutex_destroy(&al->mu);
        free(al);
        return NULL;
    }
    return al;
}

void access_log_free(access_log_t *al) {
    if (!al) return;
    pthread_mutex_lock(&al->mu);
    al->stop = 1;
    pthread_cond_signal(&al->wake);
    pthread_mutex_unlock(&al->mu);
    pthread_join(al->thread, NULL);
    pthread_cond_destroy(&al->wake);
    pthread_mutex_destroy(&al->mu);
    buf_free(&al->pending);
    buf_free(&al->line);
    free(al);
}

void access_log_request(access_log_t *al, const route_req_t *req, const route_res_t *res) {
    if (!al || !config_current(http_request_ctx(req->http))->access_log) return;
    buf_t *line = &al->line;
    line->len = 0;
    access_log_format_line(al->format, req, res, line);
    if (!line->data) return; /* out of memory: the line is lost, nothing else is */
    int dropped = 0;
    pthread_mutex_lock(&al->mu);
    if (al->pending.len + line->len > ACCESS_LOG_BUFFER_MAX ||
        buf_append(&al->pending, line->data, line->len) != 0) {
        al->dropped++;
        dropped = 1;
    } else if (al->pending.len >= ACCESS_LOG_WAKE_BYTES &&
               al->pending.len - line->len < ACCESS_LOG_WAKE_BYTES) {
        pthread_cond_signal(&al->wake);
    }
    uint64_t total = al->dropped;
    pthread_mutex_unlock(&al->mu);
    if (line->cap > 64 * 1024) buf_free(line);
    if (dropped)
        route_log_limited(&al->drop_log, LOG_WARN,
                          "access log: standard error is not keeping up; %" PRIu64
                          " line(s) dropped so far",
                          total);
}

void access_log_http(access_log_t *al, http_request_t *http, int status) {
    if (!al) return;
    route_req_t req = {.http = http};
    route_res_t res = {
        .status = status,
        .elapsed_ns = util_now_mono_ns() - http_request_start_mono_ns(http),
        .bytes_sent = http_response_bytes_sent(http),
    };
    access_log_request(al, &req, &res);
}

uint64_t access_log_dropped(access_log_t *al) {
    if (!al) return 0;
    pthread_mutex_lock(&al->mu);
    uint64_t n = al->dropped;
    pthread_mutex_unlock(&al->mu);
    return n;
}
