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

/* Results, valid after extract_finish until extract_free. The text is the Chat Completions
 * choices[0] content or text, or the Responses API's output_text (its deltas in a stream);
 * usage the Chat names or the Responses API's input/output names (prompt and total needed,
 * completion 0 when absent, as in an embeddings reply). */
const char *extract_content(const extract_t *x, size_t *len); /* NULL when none */
const char *extract_model(const extract_t *x);                /* NULL when none */
int extract_usage(const extract_t *x, int64_t *prompt, int64_t *completion, int64_t *total);
/* The subsets a usage reports: EXTRACT_HAS_CACHED (prompt_tokens_details.cached_tokens or
 * input_tokens_details.cached_tokens) and EXTRACT_HAS_REASONING (completion_tokens_details /
 * output_tokens_details .reasoning_tokens), or 0. */
enum { EXTRACT_HAS_CACHED = 1, EXTRACT_HAS_REASONING = 2 };
int extract_usage_details(const extract_t *x, int64_t *cached, int64_t *reasoning);

/* ---- SSE streams, while being fed ---- */
int extract_is_sse(const extract_t *x);
/* The stream's `data: [DONE]` arrived. */
int extract_saw_done(const extract_t *x);
/* The bytes fed so far end between two events. */
int extract_at_event_boundary(const extract_t *x);
/* For a proxy that forwards a stream by whole events: during extract_feed, cb runs at the end
 * of each event (blank line) with the offset just past it in the fed buffer, and flags saying
 * what that event was: a usage-only chunk ("choices": [] and a "usage" object), a chunk with
 * "usage": null (what an upstream adds to every chunk once include_usage was asked). */
enum { EXTRACT_EVENT_USAGE_ONLY = 1, EXTRACT_EVENT_USAGE_NULL = 2 };
typedef void (*extract_cut_cb)(void *ud, size_t end, int flags);
void extract_set_cut_cb(extract_t *x, extract_cut_cb cb, void *ud);

/* Reads the top-level "model" (string) and "stream" (bool) of a JSON request body.
 * *model is malloc'd or NULL. Never fails: a non-JSON body gives NULL/0. */
void extract_request_fields(const char *body, size_t len, char **model, int *stream);
/* The same with *model in arena (no malloc). */
void extract_request_fields_arena(const char *body, size_t len, arena_t *arena, char **model,
                                  int *stream);

/* The scanner's JSON, for body_edit.c's edits: validates the object at buf[at] (its opening
 * '{'; depth: its nesting level, the top level 1) as json_loadb would, and finds the value of
 * its last member named key (the one a JSON reader keeps). 0, or -1 when malformed. */
typedef struct extract_json_member {
    size_t close; /* offset of the object's closing '}' */
    int has_members;
    int found;
    size_t value_start, value_end; /* the value's bytes: [start, end) */
    /* What removing the member removes: its key and value with the comma before it, or, for
     * the first member, the comma after it. */
    size_t member_start, member_end;
} extract_json_member_t;
int extract_json_find_member(const char *buf, size_t len, size_t at, unsigned depth,
                             const char *key, extract_json_member_t *out);

/* For tests and benchmarks. The fast path (on by default) reads an SSE event that has the
 * shape of the previous one by comparing it with that one; off, every event goes through the
 * full JSON scanner. The results are the same either way. */
void extract_set_fast_path(extract_t *x, int on);
/* SSE events that took the fast path; *events (may be NULL): events read, [DONE] excluded. */
size_t extract_fast_events(const extract_t *x, size_t *events);

#endif
