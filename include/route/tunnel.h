/* tunnel.h: a byte relay between two streams (a WebSocket session after its 101: the client's
 * connection and the upstream's). What one side sends the other receives, as it came: the
 * bytes are not parsed (no WebSocket frames, no close codes), so any protocol passes.
 *
 * It ends when either side closes (that side's EOF shuts down the other's write side once its
 * queued bytes are out, then both close), on an error, or after idle_ms without a byte either
 * way. Reading a side pauses while the other side has more than its high-water mark queued
 * and resumes when that drains. */
#ifndef ROUTE_TUNNEL_H
#define ROUTE_TUNNEL_H

#include <stdint.h>

#include "route/stream.h"

typedef struct tunnel tunnel_t;

typedef struct tunnel_stats {
    uint64_t bytes_from[2]; /* read from side i, and so handed to the other side */
    const char *reason;     /* why it ended: "client closed", "idle timeout"... (static or
                               in the tunnel until the done callback returns) */
    int error;              /* it ended by a connection error, not a close or a timeout */
} tunnel_stats_t;

/* Called once when the tunnel ended by itself; both streams are closed by then. Not called
 * after tunnel_close. */
typedef void (*tunnel_done_cb)(void *ud, const tunnel_stats_t *stats);

/* Takes both streams (their callbacks become the tunnel's) and starts relaying. names[i]
 * labels side i in the reason ("client", "upstream"); they must outlive the tunnel. idle_ms 0:
 * no idle timeout. NULL when out of memory: the streams are untouched, the caller closes them. */
tunnel_t *tunnel_start(uv_loop_t *loop, stream_t *side0, stream_t *side1, const char *names[2],
                       uint64_t idle_ms, tunnel_done_cb done, void *ud);
/* Sends bytes to side `to` that arrived before the tunnel started (what followed the
 * handshake's head), counted as read from the other side. data may lie in ref. 0 or -1. */
int tunnel_send(tunnel_t *t, int to, const char *data, size_t len, refbuf_t *ref);
/* Ends it now (shutdown, the owner giving up): closes both streams, fills *stats if not NULL,
 * and calls no callback. */
void tunnel_close(tunnel_t *t, tunnel_stats_t *stats);

#endif
