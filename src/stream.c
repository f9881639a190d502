/* stream.c: one TCP connection, plain or TLS, for both sides of the proxy.
 *
 * Owns: accept and connect of the socket, the TLS handshake (server side, and client side
 * with SNI, verification and resumption through tls.c), moving ciphertext between the socket
 * and tls.c, read blocks (refcounted, recycled when nobody kept them), writes (tried on the
 * socket at once, queued only for what the kernel did not take), the pending-bytes count with
 * its high/low-water event, read pause/resume, shutdown and close. Free lists with ceilings
 * for read blocks, write requests and stream objects, so streaming allocates nothing per
 * chunk.
 * Must not: know about HTTP, interpret the bytes, or block. */
#include "route/stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FREE_BUFS_MAX    16
#define FREE_WRITES_MAX  1024
#define FREE_STREAMS_MAX 64
/* Scratch memory a recycled write request may keep. */
#define WRITE_KEEP_BYTES (64 * 1024)

typedef struct stream_write_req {
    uv_write_t w;
    stream_t *s;
    refbuf_t *ref;
    size_t bytes;
    buf_t copy;   /* bytes outside ref the kernel did not take at once */
    buf_t cipher; /* TLS output being written; swapped back to the session when done */
    struct stream_write_req *next_free;
} stream_write_req_t;

struct stream_env {
    uv_loop_t *loop;
    refbuf_t *free_bufs[FREE_BUFS_MAX];
    size_t n_free_bufs;
    stream_write_req_t *free_writes;
    size_t n_free_writes;
    stream_t *free_streams; /* closed streams, linked through data */
    size_t n_free_streams;
};

struct stream {
    stream_env_t *env;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    stream_callbacks_t cb;
    void *data;
    tls_conn_t *tls;
    refbuf_t *rbuf; /* the block a read is landing in */
    size_t queued, high, low;
    /* Send progress: bytes given to uv_write in all, what the kernel had taken of them when
     * last looked at, and when that last changed (loop ms). */
    uint64_t submitted, accepted_seen, acked_seen, progress_ms;
    int above_high, reading, closing, shutting, tls_ready, is_client, connected;
    char err[256];
};

/* ---------------------------------------------------------------- environment */

stream_env_t *stream_env_new(uv_loop_t *loop) {
    stream_env_t *env = calloc(1, sizeof(*env));
    if (env) env->loop = loop;
    return env;
}

void stream_env_free(stream_env_t *env) {
    if (!env) return;
    for (size_t i = 0; i < env->n_free_bufs; i++)
        refbuf_release(env->free_bufs[i]);
    while (env->free_streams) {
        stream_t *s = env->free_streams;
        env->free_streams = s->data;
        free(s);
    }
    while (env->free_writes) {
        stream_write_req_t *w = env->free_writes;
        env->free_writes = w->next_free;
        buf_free(&w->copy);
        buf_free(&w->cipher);
        free(w);
    }
    free(env);
}

static refbuf_t *buf_get(stream_env_t *env) {
    if (env->n_free_bufs) return env->free_bufs[--env->n_free_bufs];
    return refbuf_new(STREAM_READ_BUF);
}

/* A block nobody else kept goes back to the free list; one a write or a handler still holds
 * is theirs to free. */
static void buf_recycle(stream_env_t *env, refbuf_t *b) {
    if (!b) return;
    if (b->refs == 1 && env->n_free_bufs < FREE_BUFS_MAX) {
        b->len = 0;
        env->free_bufs[env->n_free_bufs++] = b;
        return;
    }
    refbuf_release(b);
}

static stream_write_req_t *write_get(stream_env_t *env) {
    stream_write_req_t *w = env->free_writes;
    if (w) {
        env->free_writes = w->next_free;
        env->n_free_writes--;
        return w;
    }
    return calloc(1, sizeof(*w));
}

static void write_put(stream_env_t *env, stream_write_req_t *w) {
    if (w->ref) refbuf_release(w->ref);
    w->ref = NULL;
    w->copy.len = w->cipher.len = 0;
    if (w->copy.cap > WRITE_KEEP_BYTES) buf_free(&w->copy);
    if (w->cipher.cap > WRITE_KEEP_BYTES) buf_free(&w->cipher);
    if (env->n_free_writes >= FREE_WRITES_MAX) {
        buf_free(&w->copy);
        buf_free(&w->cipher);
        free(w);
        return;
    }
    w->next_free = env->free_writes;
    env->free_writes = w;
    env->n_free_writes++;
}

/* ---------------------------------------------------------------- lifetime */

static stream_t *stream_new(stream_env_t *env, const stream_callbacks_t *cb, void *data) {
    stream_t *s = env->free_streams;
    if (s) {
        env->free_streams = s->data;
        env->n_free_streams--;
        memset(s, 0, sizeof(*s));
    } else if (!(s = calloc(1, sizeof(*s)))) {
        return NULL;
    }
    s->env = env;
    s->cb = *cb;
    s->data = data;
    s->high = 1024 * 1024;
    s->low = 256 * 1024;
    uv_tcp_init(env->loop, &s->tcp);
    s->tcp.data = s;
    return s;
}

static void on_closed(uv_handle_t *h) {
    stream_t *s = h->data;
    stream_env_t *env = s->env;
    buf_recycle(env, s->rbuf);
    tls_conn_free(s->tls);
    if (env->n_free_streams >= FREE_STREAMS_MAX) {
        free(s);
        return;
    }
    s->data = env->free_streams;
    env->free_streams = s;
    env->n_free_streams++;
}

void stream_close(stream_t *s) {
    if (!s || s->closing) return;
    s->closing = 1;
    /* At process exit a uv_walk may have closed the handle already. */
    if (!uv_is_closing((uv_handle_t *)&s->tcp)) uv_close((uv_handle_t *)&s->tcp, on_closed);
}

void *stream_data(const stream_t *s) {
    return s->data;
}

void stream_set_data(stream_t *s, void *data, const stream_callbacks_t *cb) {
    s->data = data;
    if (cb) s->cb = *cb;
}

const char *stream_error(const stream_t *s) {
    return s->err[0] ? s->err : "connection error";
}

void stream_peer_ip(stream_t *s, char *out, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    out[0] = '\0';
    if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, out, cap);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, out, cap);
}

void stream_set_watermarks(stream_t *s, size_t high, size_t low) {
    s->high = high;
    s->low = low;
}

int stream_connected(const stream_t *s) {
    return s->connected;
}

size_t stream_pending(const stream_t *s) {
    return s->queued;
}

/* The bytes the peer acknowledged (Linux TCP_INFO tcpi_bytes_acked), 0 when unknown. glibc's
 * struct tcp_info stops short of it; the kernel's layout goes on with two more u64 first. */
static uint64_t tcp_bytes_acked(stream_t *s) {
    struct {
        struct tcp_info base;
        uint64_t pacing_rate, max_pacing_rate, bytes_acked;
    } ti;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&s->tcp, &fd) != 0) return 0;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || len < sizeof(ti)) return 0;
    return ti.bytes_acked;
}

uint64_t stream_send_stalled_ms(stream_t *s) {
    if (s->queued == 0) return 0;
    uint64_t now = uv_now(s->env->loop);
    /* Two signs of a peer taking bytes: libuv lowering its queue as the kernel takes them
     * (also inside one big write), and the peer acknowledging data. The second matters for a
     * slow reader: the kernel wakes a writer only once a third of its buffer is free, which
     * at 1 KB/s can take longer than any sensible timeout. */
    uint64_t accepted = s->submitted - uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp);
    uint64_t acked = tcp_bytes_acked(s);
    if (accepted != s->accepted_seen || acked != s->acked_seen) {
        s->accepted_seen = accepted;
        s->acked_seen = acked;
        s->progress_ms = now;
    }
    return now > s->progress_ms ? now - s->progress_ms : 0;
}

/* ---------------------------------------------------------------- writing */

static void on_write_done(uv_write_t *uw, int status) {
    stream_write_req_t *w = (stream_write_req_t *)uw;
    stream_t *s = w->s;
    s->queued -= w->bytes;
    /* Give the ciphertext memory back to the session: the next flush reuses it. */
    if (s->tls && w->cipher.cap) {
        buf_t *out = tls_pending_out(s->tls);
        if (out->len == 0 && out->cap < w->cipher.cap) {
            buf_t spare = *out;
            *out = w->cipher;
            out->len = 0;
            w->cipher = spare;
        }
    }
    write_put(s->env, w);
    if (status == UV_ECANCELED || s->closing) return;
    if (status < 0) {
        snprintf(s->err, sizeof(s->err), "%s", uv_strerror(status));
        if (s->cb.on_write_error) s->cb.on_write_error(s, status);
        return;
    }
    if (s->above_high && s->queued <= s->low) {
        s->above_high = 0;
        if (s->cb.on_drain) s->cb.on_drain(s);
    }
}

static int queue_write(stream_t *s, stream_write_req_t *w, const uv_buf_t *bufs, unsigned n) {
    w->s = s;
    if (s->queued == 0) s->progress_ms = uv_now(s->env->loop); /* a wait may start now */
    int rc = uv_write(&w->w, (uv_stream_t *)&s->tcp, bufs, n, on_write_done);
    if (rc < 0) {
        snprintf(s->err, sizeof(s->err), "%s", uv_strerror(rc));
        write_put(s->env, w);
        return -1;
    }
    s->submitted += w->bytes;
    s->queued += w->bytes;
    if (s->queued > s->high) s->above_high = 1;
    return 0;
}

/* Sends what the TLS session encrypted. */
static int flush_tls(stream_t *s) {
    buf_t *out = tls_pending_out(s->tls);
    if (out->len == 0) return 0;
    size_t done = 0;
    if (s->queued == 0) {
        uv_buf_t b = uv_buf_init(out->data, (unsigned)out->len);
        int r = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
        if (r == (int)out->len) {
            out->len = 0;
            return 0;
        }
        if (r < 0 && r != UV_EAGAIN) {
            snprintf(s->err, sizeof(s->err), "%s", uv_strerror(r));
            return -1;
        }
        if (r > 0) done = (size_t)r;
    }
    stream_write_req_t *w = write_get(s->env);
    if (!w) return -1;
    buf_t spare = w->cipher;
    w->cipher = *out;
    spare.len = 0;
    *out = spare;
    w->bytes = w->cipher.len - done;
    uv_buf_t b = uv_buf_init(w->cipher.data + done, (unsigned)w->bytes);
    return queue_write(s, w, &b, 1);
}

static int in_ref(const refbuf_t *ref, const uv_buf_t *b) {
    return ref && b->base >= ref->data && b->base + b->len <= ref->data + ref->cap;
}

int stream_writev(stream_t *s, const uv_buf_t *bufs, unsigned n, refbuf_t *ref, int flags) {
    if (s->closing || s->shutting) return -1;
    if (s->tls) { /* encryption copies the bytes: nothing needs to stay alive */
        for (unsigned i = 0; i < n; i++)
            if (bufs[i].len && tls_write(s->tls, bufs[i].base, bufs[i].len) != 0) return -1;
        return flush_tls(s);
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0) return 0;
    size_t skip = 0;
    if (s->queued == 0) {
        int r = uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
        if (r >= 0 && (size_t)r == total) return 0;
        if (r < 0 && r != UV_EAGAIN) {
            snprintf(s->err, sizeof(s->err), "%s", uv_strerror(r));
            return -1;
        }
        if (r > 0) skip = (size_t)r;
    }
    stream_write_req_t *w = write_get(s->env);
    if (!w) return -1;
    uv_buf_t stack[8], *rest = n <= 8 ? stack : malloc(n * sizeof(*rest));
    if (!rest) {
        write_put(s->env, w);
        return -1;
    }
    /* First pass: what must be copied (so the copy buffer never moves while filled). */
    size_t copy_len = 0, left = skip;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len, off = left < len ? left : len;
        left -= off;
        if (len > off && !(flags & STREAM_STABLE) && !in_ref(ref, &bufs[i])) copy_len += len - off;
    }
    if (copy_len && buf_reserve(&w->copy, copy_len) != 0) {
        if (rest != stack) free(rest);
        write_put(s->env, w);
        return -1;
    }
    unsigned m = 0;
    left = skip;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len, off = left < len ? left : len;
        left -= off;
        if (len == off) continue;
        char *base = bufs[i].base + off;
        if (!(flags & STREAM_STABLE) && !in_ref(ref, &bufs[i])) {
            char *dst = w->copy.data + w->copy.len;
            memcpy(dst, base, len - off);
            w->copy.len += len - off;
            base = dst;
        }
        rest[m++] = uv_buf_init(base, (unsigned)(len - off));
    }
    w->bytes = total - skip;
    if (ref) refbuf_retain(ref);
    w->ref = ref;
    int rc = queue_write(s, w, rest, m);
    if (rest != stack) free(rest);
    return rc;
}

/* ---------------------------------------------------------------- reading */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    stream_t *s = h->data;
    if (!s->rbuf) s->rbuf = buf_get(s->env);
    buf->base = s->rbuf ? s->rbuf->data : NULL;
    buf->len = s->rbuf ? s->rbuf->cap : 0;
}

static void fail_open(stream_t *s, int status) {
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = 0;
    if (s->cb.on_open) s->cb.on_open(s, status);
}

/* Decrypted bytes, as many records as the fed ciphertext holds. */
static void deliver_tls(stream_t *s) {
    while (!s->closing) {
        refbuf_t *plain = buf_get(s->env);
        if (!plain) {
            snprintf(s->err, sizeof(s->err), "out of memory");
            s->cb.on_read(s, UV_ENOMEM, NULL, NULL);
            return;
        }
        ssize_t n = tls_read(s->tls, plain->data, plain->cap, s->err, sizeof(s->err));
        if (n == 0) {
            buf_recycle(s->env, plain);
            break;
        }
        if (n < 0) {
            buf_recycle(s->env, plain);
            s->cb.on_read(s, n == -1 ? UV_EOF : UV_EPROTO, NULL, NULL);
            return;
        }
        plain->len = (size_t)n;
        s->cb.on_read(s, n, plain->data, plain);
        buf_recycle(s->env, plain);
    }
    /* Reading can make the session answer (a key update): send it. */
    if (!s->closing && flush_tls(s) != 0) s->cb.on_read(s, UV_EPIPE, NULL, NULL);
}

static void on_tcp_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *ub) {
    stream_t *s = h->data;
    refbuf_t *b = s->rbuf;
    s->rbuf = NULL;
    if (nread == 0 || s->closing) {
        buf_recycle(s->env, b);
        return;
    }
    if (nread < 0) {
        buf_recycle(s->env, b);
        if (nread != UV_EOF) snprintf(s->err, sizeof(s->err), "%s", uv_strerror((int)nread));
        if (s->tls && !s->tls_ready && s->is_client) {
            if (!s->err[0]) snprintf(s->err, sizeof(s->err), "TLS handshake: connection closed");
            fail_open(s, (int)nread);
            return;
        }
        s->cb.on_read(s, nread, NULL, NULL);
        return;
    }
    if (!s->tls) {
        b->len = (size_t)nread;
        s->cb.on_read(s, nread, b->data, b);
        buf_recycle(s->env, b);
        return;
    }
    int fed = tls_feed(s->tls, b->data, (size_t)nread);
    buf_recycle(s->env, b);
    if (fed != 0) {
        snprintf(s->err, sizeof(s->err), "out of memory");
        if (!s->tls_ready && s->is_client)
            fail_open(s, UV_ENOMEM);
        else
            s->cb.on_read(s, UV_ENOMEM, NULL, NULL);
        return;
    }
    if (!s->tls_ready) {
        int hs = tls_handshake(s->tls, s->err, sizeof(s->err));
        if (hs >= 0 && flush_tls(s) != 0) hs = -1;
        if (hs < 0) {
            if (s->is_client)
                fail_open(s, UV_EPROTO);
            else
                s->cb.on_read(s, UV_EPROTO, NULL, NULL);
            return;
        }
        if (hs == 0) return;
        s->tls_ready = 1;
        if (s->is_client && s->cb.on_open) {
            s->cb.on_open(s, 0);
            if (s->closing) return;
        }
    }
    deliver_tls(s);
}

void stream_read_start(stream_t *s) {
    if (s->closing || s->reading) return;
    s->reading = 1;
    uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_tcp_read);
}

void stream_read_stop(stream_t *s) {
    if (!s->reading) return;
    s->reading = 0;
    uv_read_stop((uv_stream_t *)&s->tcp);
}

/* ---------------------------------------------------------------- opening */

/* A client's connection, accepted or adopted: the TLS session (server side), then reading. */
static stream_t *server_side_start(stream_t *s, tls_config_t *tls) {
    if (tls && !(s->tls = tls_conn_new(tls, NULL, NULL))) {
        stream_close(s);
        return NULL;
    }
    s->connected = 1;
    uv_tcp_nodelay(&s->tcp, 1);
    stream_read_start(s);
    return s;
}

stream_t *stream_accept(stream_env_t *env, uv_stream_t *listener, tls_config_t *tls,
                        const stream_callbacks_t *cb, void *data) {
    stream_t *s = stream_new(env, cb, data);
    if (!s) return NULL;
    if (uv_accept(listener, (uv_stream_t *)&s->tcp) != 0) {
        stream_close(s);
        return NULL;
    }
    return server_side_start(s, tls);
}

stream_t *stream_adopt(stream_env_t *env, int fd, tls_config_t *tls, const stream_callbacks_t *cb,
                       void *data) {
    stream_t *s = stream_new(env, cb, data);
    if (!s) {
        close(fd);
        return NULL;
    }
    if (uv_tcp_open(&s->tcp, (uv_os_sock_t)fd) != 0) {
        close(fd);
        stream_close(s);
        return NULL;
    }
    return server_side_start(s, tls);
}

static void on_connect(uv_connect_t *cr, int status) {
    stream_t *s = cr->data;
    if (s->closing) return;
    if (status < 0) {
        snprintf(s->err, sizeof(s->err), "%s", uv_strerror(status));
        if (s->cb.on_open) s->cb.on_open(s, status);
        return;
    }
    s->connected = 1;
    uv_tcp_nodelay(&s->tcp, 1);
    stream_read_start(s);
    if (!s->tls) {
        if (s->cb.on_open) s->cb.on_open(s, 0);
        return;
    }
    /* The ClientHello goes out now; on_tcp_read finishes the handshake. */
    if (tls_handshake(s->tls, s->err, sizeof(s->err)) < 0 || flush_tls(s) != 0) {
        snprintf(s->err, sizeof(s->err), "TLS handshake could not start");
        fail_open(s, UV_EPROTO);
    }
}

stream_t *stream_connect(stream_env_t *env, const struct sockaddr *addr, tls_config_t *tls,
                         const char *hostname, tls_resume_t **resume, const stream_callbacks_t *cb,
                         void *data, int *err_status) {
    *err_status = 0;
    stream_t *s = stream_new(env, cb, data);
    if (!s) {
        *err_status = UV_ENOMEM;
        return NULL;
    }
    s->is_client = 1;
    if (tls && !(s->tls = tls_conn_new(tls, hostname, resume))) {
        *err_status = UV_EPROTO;
        stream_close(s);
        return NULL;
    }
    s->connect_req.data = s;
    int rc = uv_tcp_connect(&s->connect_req, &s->tcp, addr, on_connect);
    if (rc < 0) {
        *err_status = rc;
        stream_close(s);
        return NULL;
    }
    return s;
}

/* ---------------------------------------------------------------- shutdown */

static void on_shutdown_done(uv_shutdown_t *sr, int status) {
    stream_t *s = sr->data;
    if (s->closing) return;
    if (s->cb.on_shutdown) s->cb.on_shutdown(s);
}

void stream_shutdown(stream_t *s) {
    if (s->closing || s->shutting) return;
    s->shutting = 1;
    /* Reading goes on: a peer may still be sending what its owner wants to read and drop
     * (http1_server.c's lingering close after an early answer). */
    s->shutdown_req.data = s;
    if (uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp, on_shutdown_done) < 0 &&
        s->cb.on_shutdown)
        s->cb.on_shutdown(s);
}
