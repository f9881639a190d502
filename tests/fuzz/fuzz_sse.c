/* fuzz_sse.c: libFuzzer target for the SSE framer. However a stream is cut into feeds, the
 * events must be the same as when it arrives in one piece, and no event may exceed max_event.
 * Input: byte 0 picks max_event, bytes 1-2 pick cut points, the rest is the stream. */
#include "route/sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char *p;
    size_t len, cap;
    size_t max_event;
} record_t;

static void put(record_t *r, const void *s, size_t n) {
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2 + 64;
        r->p = realloc(r->p, r->cap);
        if (!r->p) abort();
    }
    memcpy(r->p + r->len, s, n);
    r->len += n;
}

/* Length-prefixed, so two different event lists never serialize alike. */
static void on_event(void *ud, const char *event, size_t event_len, const char *data,
                     size_t data_len) {
    record_t *r = ud;
    if (!data || data_len > r->max_event || event_len > r->max_event) abort();
    if (event && event_len == 0) abort(); /* an empty type is reported as NULL */
    unsigned char has = event != NULL;
    put(r, &has, 1);
    put(r, &event_len, sizeof(event_len));
    if (event) put(r, event, event_len);
    put(r, &data_len, sizeof(data_len));
    put(r, data, data_len);
}

/* Feeds in pieces: cut points in cuts[], or every `step` bytes when step > 0. */
static record_t run(const char *s, size_t len, size_t max_event, const size_t *cuts, size_t ncuts,
                    size_t step) {
    record_t r = {0};
    r.max_event = max_event;
    sse_parser_t *p = sse_new(on_event, &r, max_event);
    if (!p) abort();
    size_t at = 0;
    if (step) {
        for (; at < len; at += step)
            sse_feed(p, s + at, len - at < step ? len - at : step);
    } else {
        for (size_t i = 0; i < ncuts; i++) {
            sse_feed(p, s + at, cuts[i] - at);
            at = cuts[i];
        }
        sse_feed(p, s + at, len - at);
    }
    sse_finish(p);
    sse_free(p);
    return r;
}

static void same(const record_t *a, const record_t *b) {
    if (a->len != b->len || (a->len && memcmp(a->p, b->p, a->len) != 0)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    /* Small limits exercise dropping, a large one the normal path. */
    size_t max_event = data[0] & 0x80 ? (size_t)1 << 20 : (size_t)(data[0] & 0x7f);
    const char *s = (const char *)data + 3;
    size_t len = size - 3;
    size_t c1 = len * data[1] / 255, c2 = len * data[2] / 255;
    size_t cuts[2] = {c1 < c2 ? c1 : c2, c1 < c2 ? c2 : c1};

    record_t one = run(s, len, max_event, NULL, 0, 0);
    record_t two = run(s, len, max_event, cuts, 2, 0);
    same(&one, &two);
    free(two.p);
    record_t steps = run(s, len, max_event, NULL, 0, (size_t)(data[1] % 7) + 1);
    same(&one, &steps);
    free(steps.p);
    if (len <= 2048) {
        record_t bytes = run(s, len, max_event, NULL, 0, 1);
        same(&one, &bytes);
        free(bytes.p);
    }
    free(one.p);
    return 0;
}
