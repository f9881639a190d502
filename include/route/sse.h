/* sse.h: incremental Server-Sent Events framing (text/event-stream). Bytes arrive in any
 * split; complete events come out through a callback with their joined data lines. */
#ifndef ROUTE_SSE_H
#define ROUTE_SSE_H

#include <stddef.h>

/* data: the event's data lines joined with '\n' (no trailing newline); event: the `event:`
 * field or NULL. Pointers valid only during the call. */
typedef void (*sse_event_cb)(void *ud, const char *event, size_t event_len, const char *data,
                             size_t data_len);

typedef struct sse_parser sse_parser_t;

/* max_event: an event larger than this is dropped (its lines are skipped). */
sse_parser_t *sse_new(sse_event_cb cb, void *ud, size_t max_event);
void sse_feed(sse_parser_t *p, const char *data, size_t len);
/* For a caller that forwards the stream by whole events: cb (with sse_new's ud) runs at each
 * blank line, after the event callback of the event it ends (if it had data), with the
 * offset just past that line's end in the buffer of the sse_feed call running. */
typedef void (*sse_boundary_cb)(void *ud, size_t end);
void sse_set_boundary_cb(sse_parser_t *p, sse_boundary_cb cb);
/* 1 when the bytes fed so far end between events (no line or event started). */
int sse_at_boundary(const sse_parser_t *p);
/* In the raw bytes of one event, the value of its data line when it has exactly one (other
 * fields and comments may be there). 0 with [*at, *at + *n), or -1. */
int sse_event_data(const char *raw, size_t len, size_t *at, size_t *n);
/* Dispatches a final event that lacked its blank line. */
void sse_finish(sse_parser_t *p);
void sse_free(sse_parser_t *p);

#endif
