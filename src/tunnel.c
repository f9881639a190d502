/* tunnel.c: relays bytes between two streams, both ways, until one side closes.
 *
 * Owns: the relay (each read block written to the other side in place, no copy), backpressure
 * both ways (a side stops being read while the other has more than its high-water mark queued,
 * and is read again on that side's drain), the end (an EOF on one side shuts down the other's
 * write side after its queued bytes, then both close; an error closes both at once), the idle
 * timeout over both directions, and the byte counts.
 * Must not: parse the bytes (WebSocket frames pass as opaque bytes: no masking, close codes or
 * pings are looked at), know about HTTP or upstreams (proxy.c sets a tunnel up after a 101),
 * touch sockets or TLS directly (stream.c), or block. */
#include "route/tunnel.h"

#include <stdio.h>
#include <stdlib.h>

/* Queued bytes a side may hold before the other side stops being read, and where reading
 * resumes: as the HTTP side's response watermarks. */
#define TUNNEL_HIGH_WATER (1024 * 1024)
#define TUNNEL_LOW_WATER  (256 * 1024)

struct tunnel {
    stream_t *s[2];
    const char *name[2];
    uv_timer_t timer;
    uint64_t deadline; /* idle, loop ms (deadline_set); 0: none */
    uint64_t idle_ms;
    tunnel_done_cb done;
    void *ud;
    tunnel_stats_t stats;
    int eof[2];    /* side i sent its EOF */
    int paused[2]; /* side i is not read: the other side's queue is full */
    int shut[2];   /* side i's write side is being (or was) shut down */
    int shut_done[2];
    int ended;
    const char *later_reason; /* an end decided inside a call, reported from the timer */
    int later_error;
    char reason[160];
};

static void on_timer(uv_timer_t *t);

static int side_of(const tunnel_t *t, const stream_t *s) {
    return s == t->s[1];
}

static void on_timer_closed(uv_handle_t *h) {
    free(h->data);
}

/* Closes both streams; the tunnel frees itself once its timer handle closed. */
static void tunnel_release(tunnel_t *t) {
    t->ended = 1;
    for (int i = 0; i < 2; i++) {
        stream_close(t->s[i]);
        t->s[i] = NULL;
    }
    uv_close((uv_handle_t *)&t->timer, on_timer_closed);
}

static void tunnel_end(tunnel_t *t, const char *reason, int error) {
    if (t->ended) return;
    t->stats.reason = reason;
    t->stats.error = error;
    tunnel_stats_t stats = t->stats;
    tunnel_done_cb done = t->done;
    void *ud = t->ud;
    tunnel_release(t); /* t stays allocated until the timer's close callback */
    if (done) done(ud, &stats);
}

static void end_with(tunnel_t *t, int side, const char *what, const char *detail, int error) {
    if (detail)
        snprintf(t->reason, sizeof(t->reason), "%s %s: %s", t->name[side], what, detail);
    else
        snprintf(t->reason, sizeof(t->reason), "%s %s", t->name[side], what);
    tunnel_end(t, t->reason, error);
}

static void touch(tunnel_t *t) {
    if (t->idle_ms) deadline_set(&t->timer, &t->deadline, t->idle_ms, on_timer);
}

static void on_timer(uv_timer_t *h) {
    tunnel_t *t = h->data;
    if (t->ended) return;
    if (t->later_reason) {
        tunnel_end(t, t->later_reason, t->later_error);
        return;
    }
    if (!deadline_due(h, &t->deadline, on_timer)) return;
    snprintf(t->reason, sizeof(t->reason), "idle timeout (no byte either way for %.3g s)",
             (double)t->idle_ms / 1000.0);
    tunnel_end(t, t->reason, 0);
}

/* Writes bytes read from side `from` to the other side, pausing `from` when that side's queue
 * is over the high-water mark. 0, or -1 when the write failed. */
static int relay(tunnel_t *t, int from, const char *data, size_t len, refbuf_t *ref) {
    int to = !from;
    if (t->shut[to]) return 0; /* its write side is closing: nothing more can go there */
    t->stats.bytes_from[from] += len;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    if (stream_write(t->s[to], &b, 1, ref) != 0) return -1;
    if (stream_pending(t->s[to]) > TUNNEL_HIGH_WATER && !t->paused[from]) {
        t->paused[from] = 1;
        stream_read_stop(t->s[from]);
    }
    return 0;
}

static void shut_write_side(tunnel_t *t, int side) {
    if (t->shut[side]) return;
    t->shut[side] = 1;
    stream_shutdown(t->s[side]);
}

static void on_read(stream_t *s, ssize_t nread, const char *data, refbuf_t *ref) {
    tunnel_t *t = stream_data(s);
    if (t->ended) return;
    int from = side_of(t, s), to = !from;
    if (nread > 0) {
        touch(t);
        if (relay(t, from, data, (size_t)nread, ref) != 0)
            end_with(t, to, "write failed", stream_error(t->s[to]), 1);
        return;
    }
    if (nread != UV_EOF) {
        end_with(t, from, "connection error", stream_error(s), 1);
        return;
    }
    /* A close on one side: the other side gets what is still queued for it, then the FIN. */
    t->eof[from] = 1;
    stream_read_stop(s);
    if (!t->stats.reason) {
        snprintf(t->reason, sizeof(t->reason), "%s closed", t->name[from]);
        t->stats.reason = t->reason;
    }
    shut_write_side(t, to); /* both sides closed: both flushes run, the last one ends it */
}

static void on_shutdown(stream_t *s) {
    tunnel_t *t = stream_data(s);
    if (t->ended) return;
    int side = side_of(t, s), other = !side;
    t->shut_done[side] = 1;
    if (t->shut[other] && !t->shut_done[other]) return; /* its flush is under way */
    /* The side that closed first may still have bytes queued for it (the other's last words,
     * a WebSocket close frame): let them out before closing, bounded by the idle timeout. */
    if (!t->shut[other] && stream_pending(t->s[other]) > 0) {
        stream_read_stop(t->s[side]);
        shut_write_side(t, other);
        return;
    }
    tunnel_end(t, t->stats.reason ? t->stats.reason : "closed", 0);
}

static void on_drain(stream_t *s) {
    tunnel_t *t = stream_data(s);
    if (t->ended) return;
    int from = !side_of(t, s); /* the side whose bytes filled this one */
    touch(t);                  /* the peer is reading: not idle */
    if (t->paused[from] && !t->eof[from]) {
        t->paused[from] = 0;
        stream_read_start(t->s[from]);
    }
}

static void on_write_error(stream_t *s, int status) {
    tunnel_t *t = stream_data(s);
    if (t->ended) return;
    end_with(t, side_of(t, s), "write failed", stream_error(s), 1);
}

static const stream_callbacks_t tunnel_events = {
    .on_read = on_read,
    .on_write_error = on_write_error,
    .on_drain = on_drain,
    .on_shutdown = on_shutdown,
};

tunnel_t *tunnel_start(uv_loop_t *loop, stream_t *side0, stream_t *side1, const char *names[2],
                       uint64_t idle_ms, tunnel_done_cb done, void *ud) {
    tunnel_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->s[0] = side0;
    t->s[1] = side1;
    t->name[0] = names[0];
    t->name[1] = names[1];
    t->idle_ms = idle_ms;
    t->done = done;
    t->ud = ud;
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    for (int i = 0; i < 2; i++) {
        stream_set_data(t->s[i], t, &tunnel_events);
        stream_set_watermarks(t->s[i], TUNNEL_HIGH_WATER, TUNNEL_LOW_WATER);
        stream_read_start(t->s[i]);
    }
    touch(t);
    return t;
}

int tunnel_send(tunnel_t *t, int to, const char *data, size_t len, refbuf_t *ref) {
    if (t->ended || t->later_reason) return -1;
    if (len == 0) return 0;
    touch(t);
    if (relay(t, !to, data, len, ref) == 0) return 0;
    /* The owner is inside this call: it hears of the end from the next loop iteration. */
    snprintf(t->reason, sizeof(t->reason), "%s write failed: %s", t->name[to],
             stream_error(t->s[to]));
    t->later_reason = t->reason;
    t->later_error = 1;
    uv_timer_start(&t->timer, on_timer, 0, 0);
    return -1;
}

void tunnel_close(tunnel_t *t, tunnel_stats_t *stats) {
    if (!t || t->ended) return;
    if (!t->stats.reason) t->stats.reason = "closed by the proxy";
    if (stats) *stats = t->stats;
    tunnel_release(t);
}
