/* stream.h: one TCP connection with optional TLS, as plaintext in and plaintext out. Both the
 * client side (accepted connections) and the upstream side (outgoing connections) use it, so
 * the TLS handshake, the ciphertext moves, write queueing and backpressure exist once.
 *
 * Reads: plaintext arrives in refcounted blocks through on_read; retain the block to keep the
 * bytes past the callback (a block nobody retained is reused for the next read, so idle
 * connections hold no read buffer). Writes: stream_write tries the socket at once and queues
 * only what the kernel did not take.
 *
 * Also the deadline timers (inline, at the end) that both HTTP sides use for their timeouts. */
#ifndef ROUTE_STREAM_H
#define ROUTE_STREAM_H

#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "route/tls.h"
#include "route/util.h"

#define STREAM_READ_BUF (64 * 1024)

typedef struct stream stream_t;
typedef struct stream_env stream_env_t;

typedef struct stream_callbacks {
    /* nread > 0: plaintext bytes in ref. nread < 0: UV_EOF (the peer closed, TLS
     * close_notify included) or an error (UV_EPROTO for TLS, see stream_error). */
    void (*on_read)(stream_t *s, ssize_t nread, const char *data, refbuf_t *ref);
    /* Outgoing streams: connected and (for TLS) the handshake done (status 0), or failed
     * (status < 0, message in stream_error). */
    void (*on_open)(stream_t *s, int status);
    /* A queued write failed; the stream is unusable. */
    void (*on_write_error)(stream_t *s, int status);
    /* The queued bytes fell to the low-water mark after being above the high-water mark. */
    void (*on_drain)(stream_t *s);
    /* stream_shutdown finished: everything queued was written and the FIN sent. */
    void (*on_shutdown)(stream_t *s);
} stream_callbacks_t;

/* Per-loop shared state: free lists (with ceilings) for read blocks and write requests. */
stream_env_t *stream_env_new(uv_loop_t *loop);
void stream_env_free(stream_env_t *env);

/* An accepted connection; with tls the server handshake runs before any on_read. NULL when
 * accepting failed. */
stream_t *stream_accept(stream_env_t *env, uv_stream_t *listener, tls_config_t *tls,
                        const stream_callbacks_t *cb, void *data);
/* The same for a socket accepted by the caller (fd is the stream's from now on, closed on
 * failure too). */
stream_t *stream_adopt(stream_env_t *env, int fd, tls_config_t *tls, const stream_callbacks_t *cb,
                       void *data);
/* An outgoing connection to addr; with tls, hostname is the SNI and the name checked in the
 * certificate, and resume keeps the session for the next connection. on_open reports the
 * outcome from a later loop iteration. NULL only when out of memory (or the connect could not
 * start: then *err_status is set). */
stream_t *stream_connect(stream_env_t *env, const struct sockaddr *addr, tls_config_t *tls,
                         const char *hostname, tls_resume_t **resume, const stream_callbacks_t *cb,
                         void *data, int *err_status);

void *stream_data(const stream_t *s);
void stream_set_data(stream_t *s, void *data, const stream_callbacks_t *cb);
/* The last error message ("certificate verify failed: ...", "connection reset"...). */
const char *stream_error(const stream_t *s);
/* 1 once the TCP connection is up (a failed on_open with this set failed in TLS). */
int stream_connected(const stream_t *s);
/* The peer's address as text ("" when unknown). */
void stream_peer_ip(stream_t *s, char *out, size_t cap);

void stream_read_start(stream_t *s);
void stream_read_stop(stream_t *s);

/* Writes bufs in order as one write (one writev, or one TLS flush). Bytes inside ref's block
 * are kept alive by retaining ref until written; any other bytes (static text, the caller's
 * scratch) are copied if the kernel does not take them at once, so the caller may reuse them
 * on return. With STREAM_STABLE the caller promises every byte stays valid until the write
 * completes or the stream closes, and nothing is copied. 0, or -1 (closed or failed). */
#define STREAM_STABLE 1
int stream_writev(stream_t *s, const uv_buf_t *bufs, unsigned n, refbuf_t *ref, int flags);
static inline int stream_write(stream_t *s, const uv_buf_t *bufs, unsigned n, refbuf_t *ref) {
    return stream_writev(s, bufs, n, ref, 0);
}
/* Bytes handed over but not yet taken by the kernel. */
size_t stream_pending(const stream_t *s);
/* While bytes are pending: ms since the kernel last took any of them (as seen by the calls
 * to this, so call it at least every few seconds while waiting). 0 when nothing is pending. */
uint64_t stream_send_stalled_ms(stream_t *s);
/* on_drain fires when pending falls to low after having exceeded high. */
void stream_set_watermarks(stream_t *s, size_t high, size_t low);

/* Lets queued writes finish, sends FIN, then on_shutdown; reading goes on until the owner
 * stops it or closes (a lingering close reads and drops what the peer still sends). */
void stream_shutdown(stream_t *s);
/* Closes now (queued writes are dropped). No callback follows; the stream frees itself. */
void stream_close(stream_t *s);

/* ---- deadline timers, for both HTTP sides ----
 * A deadline that moves often (an idle timeout renewed by every read, a keep-alive wait per
 * request) costs no timer operation when it moves later or goes away: the timer fires at
 * its old time, sees the deadline (loop ms, 0 = none) and re-arms itself for the rest. */
/* A timer it has to start wakes after wake_ms when that is sooner (0: no such hint), so a
 * shorter deadline expected next (the body's idle timeout after the headers') finds it due
 * soon enough and restarts nothing. */
static inline void deadline_set_early(uv_timer_t *t, uint64_t *deadline, uint64_t ms,
                                      uint64_t wake_ms, uv_timer_cb cb) {
    if (ms == 0) {
        *deadline = 0;
        return;
    }
    *deadline = uv_now(t->loop) + ms;
    if (!wake_ms || wake_ms > ms) wake_ms = ms;
    if (!uv_is_active((uv_handle_t *)t) || uv_timer_get_due_in(t) > ms)
        uv_timer_start(t, cb, wake_ms, 0);
}
static inline void deadline_set(uv_timer_t *t, uint64_t *deadline, uint64_t ms, uv_timer_cb cb) {
    deadline_set_early(t, deadline, ms, 0, cb);
}
/* In the timer's callback: 1 when the deadline has passed (it is cleared), else 0 (none is
 * set, or the timer was re-armed for the time left, or wake_ms when that is sooner and not 0,
 * as deadline_set_early). */
static inline int deadline_due_early(uv_timer_t *t, uint64_t *deadline, uint64_t wake_ms,
                                     uv_timer_cb cb) {
    if (*deadline == 0) return 0;
    uint64_t now = uv_now(t->loop);
    if (now < *deadline) {
        uint64_t left = *deadline - now;
        uv_timer_start(t, cb, wake_ms && wake_ms < left ? wake_ms : left, 0);
        return 0;
    }
    *deadline = 0;
    return 1;
}
static inline int deadline_due(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb) {
    return deadline_due_early(t, deadline, 0, cb);
}

#endif
