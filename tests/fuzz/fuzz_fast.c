/* fuzz_fast.c: libFuzzer target for the SSE fast path (the template match in extract.c). The
 * same stream is read with the fast path on and off (every event through the full scanner):
 * the results must be equal, whatever the bytes. Two streams are made from the input:
 *   - the input itself as an SSE stream, fed whole and cut at a data-derived point;
 *   - a base document (the input's first line) alternating with variants of it, each line
 *     after the first giving one variant: the bytes between two of the base's quotes, or one
 *     of its digit runs, replaced by the rest of the line. Those land inside, across and next
 *     to the template's holes, where a wrong match would show. */
#include "route/extract.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"

/* util.h's growable buffer; a failed allocation ends the run (it is no finding). */
static void put(buf_t *b, const char *s, size_t n) {
    if (n && buf_append(b, s, n) != 0) abort();
}

/* One event; line ends inside would split it into data lines, so they become spaces. */
static void put_event(buf_t *b, const char *doc, size_t n) {
    put(b, "data: ", 6);
    size_t at = b->len;
    put(b, doc, n);
    for (size_t i = at; i < b->len; i++)
        if (b->data[i] == '\n' || b->data[i] == '\r') b->data[i] = ' ';
    put(b, "\n\n", 2);
}

typedef struct {
    char *content;
    size_t content_len;
    char *model;
    int has_usage;
    int64_t u[5]; /* prompt, completion, total, cached, reasoning */
    int details;
    size_t events, fast;
} result_t;

static result_t run(const char *s, size_t len, size_t cut, int fast) {
    result_t r = {0};
    extract_t *x = extract_new("text/event-stream", 17);
    if (!x) abort();
    extract_set_fast_path(x, fast);
    extract_feed(x, s, cut);
    extract_feed(x, s + cut, len - cut);
    extract_finish(x);
    const char *c = extract_content(x, &r.content_len);
    if (c) {
        if (c[r.content_len] != '\0') abort();
        r.content = malloc(r.content_len + 1);
        if (!r.content) abort();
        memcpy(r.content, c, r.content_len + 1);
    }
    if (extract_model(x)) r.model = strdup(extract_model(x));
    r.has_usage = extract_usage(x, &r.u[0], &r.u[1], &r.u[2]);
    r.details = extract_usage_details(x, &r.u[3], &r.u[4]);
    r.fast = extract_fast_events(x, &r.events);
    if (r.fast > r.events || (!fast && r.fast)) abort();
    extract_free(x);
    return r;
}

static void same(const char *s, size_t len, size_t cut) {
    result_t a = run(s, len, cut, 1), b = run(s, len, cut, 0);
    if (!a.content != !b.content || a.content_len != b.content_len) abort();
    if (a.content && memcmp(a.content, b.content, a.content_len) != 0) abort();
    if (!a.model != !b.model || (a.model && strcmp(a.model, b.model) != 0)) abort();
    if (a.has_usage != b.has_usage || (a.has_usage && memcmp(a.u, b.u, sizeof(a.u)) != 0)) abort();
    if (a.details != b.details) abort();
    if (a.events != b.events) abort();
    free(a.content);
    free(a.model);
    free(b.content);
    free(b.model);
}

/* The base with one span replaced: selector picks a string body (between the k-th and the
 * next quote) or, with its high bit, the k-th run of digits. */
static void put_variant(buf_t *out, const char *base, size_t blen, unsigned char selector,
                        const char *with, size_t wlen) {
    size_t spans[64][2], n = 0;
    if (selector & 0x80) {
        for (size_t i = 0; i < blen && n < 64;) {
            if (base[i] >= '0' && base[i] <= '9') {
                size_t j = i;
                while (j < blen && base[j] >= '0' && base[j] <= '9')
                    j++;
                spans[n][0] = i;
                spans[n][1] = j;
                n++;
                i = j;
            } else {
                i++;
            }
        }
    } else {
        size_t prev = SIZE_MAX;
        for (size_t i = 0; i < blen && n < 64; i++) {
            if (base[i] != '"') continue;
            if (prev != SIZE_MAX) {
                spans[n][0] = prev + 1;
                spans[n][1] = i;
                n++;
            }
            prev = i;
        }
    }
    buf_t doc = {0};
    if (n) {
        size_t k = (selector & 0x7f) % n;
        put(&doc, base, spans[k][0]);
        put(&doc, with, wlen);
        put(&doc, base + spans[k][1], blen - spans[k][1]);
    } else {
        put(&doc, base, blen);
        put(&doc, with, wlen);
    }
    put_event(out, doc.data ? doc.data : "", doc.len);
    buf_free(&doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *in = (const char *)data;
    size_t cut = size ? data[0] * size / 255 : 0;
    same(in, size, cut);

    if (size > 65536) return 0;
    const char *nl = memchr(in, '\n', size);
    size_t blen = nl ? (size_t)(nl - in) : size;
    buf_t stream = {0};
    put_event(&stream, in, blen);
    for (const char *line = nl ? nl + 1 : NULL; line && line < in + size;) {
        const char *end = memchr(line, '\n', (size_t)(in + size - line));
        if (!end) end = in + size;
        if (end > line) {
            put_variant(&stream, in, blen, (unsigned char)line[0], line + 1,
                        (size_t)(end - line - 1));
            put_event(&stream, in, blen); /* back to the base, itself matched or relearned */
        }
        line = end + 1;
    }
    same(stream.data, stream.len, stream.len * (size ? data[size - 1] : 0) / 255);
    buf_free(&stream);
    return 0;
}
