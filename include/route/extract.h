/* extract.h: what the proxy learns from a response body while forwarding it: the assistant
 * text, the model and token usage, for text/event-stream (via sse.h) and application/json.
 * Fed the same buffers that go to the client; never blocks, never fails the stream: a
 * malformed body or event is skipped. */
#ifndef ROUTE_EXTRACT_H
#define ROUTE_EXTRACT_H

#include <stddef.h>
#include <stdint.h>

#include "route/util.h"

#define EXTRACT_CONTENT_CAP (1024 * 1024)

typedef struct extract extract_t;

/* content_type: the response's Content-Type value (may be NULL: nothing is extracted). */
extract_t *extract_new(const char *content_type, size_t content_type_len);
void extract_feed(extract_t *x, const char *data, size_t len);
/* Call once at the end of the body; parses a buffered JSON body. */
void extract_finish(extract_t *x);
void extract_free(extract_t *x);

/* Recycled extractors (kept with their buffers, up to a ceiling), one pool per loop:
 * extract_pool_get is extract_new, extract_pool_put is extract_free. Zero-initialized is
 * ready. */
typedef struct extract_pool {
    extract_t *free;
    size_t n_free;
} extract_pool_t;
extract_t *extract_pool_get(extract_pool_t *pool, const char *content_type,
                            size_t content_type_len);
void extract_pool_put(extract_pool_t *pool, extract_t *x);
void extract_pool_release(extract_pool_t *pool);

/* Results, valid after extract_finish until extract_free. */
const char *extract_content(const extract_t *x, size_t *len); /* NULL when none */
const char *extract_model(const extract_t *x);                /* NULL when none */
int extract_usage(const extract_t *x, int64_t *prompt, int64_t *completion, int64_t *total);

/* Reads the top-level "model" (string) and "stream" (bool) of a JSON request body.
 * *model is malloc'd or NULL. Never fails: a non-JSON body gives NULL/0. */
void extract_request_fields(const char *body, size_t len, char **model, int *stream);
/* The same with *model in arena (no malloc). */
void extract_request_fields_arena(const char *body, size_t len, arena_t *arena, char **model,
                                  int *stream);

/* For tests and benchmarks. The fast path (on by default) reads an SSE event that has the
 * shape of the previous one by comparing it with that one; off, every event goes through the
 * full JSON scanner. The results are the same either way. */
void extract_set_fast_path(extract_t *x, int on);
/* SSE events that took the fast path; *events (may be NULL): events read, [DONE] excluded. */
size_t extract_fast_events(const extract_t *x, size_t *events);

#endif
