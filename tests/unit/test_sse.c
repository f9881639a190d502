/* test_sse.c: the SSE framer against the WHATWG event-stream rules, fed whole, split at
 * every byte boundary and one byte at a time; every way of cutting must give the same events. */
#include "route/sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

/* Events rendered as text: "[event|data]" with '-' for no event, so a whole run compares as
 * one string. */
typedef struct {
    char *p;
    size_t len, cap;
} out_t;

static void out_add(out_t *o, const char *s, size_t n) {
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void on_event(void *ud, const char *event, size_t event_len, const char *data,
                     size_t data_len) {
    out_t *o = ud;
    out_add(o, "[", 1);
    if (event)
        out_add(o, event, event_len);
    else
        out_add(o, "-", 1);
    out_add(o, "|", 1);
    out_add(o, data, data_len);
    out_add(o, "]", 1);
}

/* Feeds s in pieces starting at the given cut points (sorted, ncuts of them). */
static char *run_cuts(const char *s, size_t len, size_t max_event, const size_t *cuts, size_t ncuts,
                      size_t *out_len) {
    out_t o = {0};
    out_add(&o, "", 0);
    sse_parser_t *p = sse_new(on_event, &o, max_event);
    size_t at = 0;
    for (size_t i = 0; i < ncuts; i++) {
        sse_feed(p, s + at, cuts[i] - at);
        at = cuts[i];
    }
    sse_feed(p, s + at, len - at);
    sse_finish(p);
    sse_free(p);
    *out_len = o.len;
    return o.p;
}

/* One-shot result must equal want; every two-piece split and byte-at-a-time must equal it. */
static int check_stream(const char *s, size_t len, size_t max_event, const char *want) {
    size_t olen;
    char *one = run_cuts(s, len, max_event, NULL, 0, &olen);
    int ok = strlen(want) == olen && memcmp(one, want, olen) == 0;
    if (!ok) fprintf(stderr, "  one-shot: got \"%s\" want \"%s\"\n", one, want);
    for (size_t k = 0; k <= len && ok; k++) {
        size_t l;
        char *two = run_cuts(s, len, max_event, &k, 1, &l);
        if (l != olen || memcmp(two, one, l) != 0) {
            fprintf(stderr, "  split at %zu: got \"%s\" want \"%s\"\n", k, two, one);
            ok = 0;
        }
        free(two);
    }
    if (ok && len > 1) {
        size_t *cuts = malloc(sizeof(size_t) * (len - 1));
        for (size_t i = 0; i + 1 < len; i++)
            cuts[i] = i + 1;
        size_t l;
        char *bytes = run_cuts(s, len, max_event, cuts, len - 1, &l);
        if (l != olen || memcmp(bytes, one, l) != 0) {
            fprintf(stderr, "  byte at a time: got \"%s\" want \"%s\"\n", bytes, one);
            ok = 0;
        }
        free(bytes);
        free(cuts);
    }
    free(one);
    return ok;
}
#define STREAM(s, want) check_stream((s), sizeof(s) - 1, 1 << 20, (want))

static void test_basic(void) {
    CHECK(STREAM("data: hello\n\n", "[-|hello]"));
    CHECK(STREAM("data:hello\n\ndata:  two\n\n", "[-|hello][-| two]"));
    CHECK(STREAM("", ""));
    CHECK(STREAM("\n\n\n", ""));
    /* A field without a colon has an empty value: "data" alone dispatches empty data. */
    CHECK(STREAM("data\n\n", "[-|]"));
    CHECK(STREAM("data:\n\n", "[-|]"));
    CHECK(STREAM("data: \n\n", "[-|]"));
}

/* Only the first space goes; other bytes, NUL included, are data. */
static void test_nul_data(void) {
    static const char s[] = "data: a\0b\n\n";
    size_t l;
    char *r = run_cuts(s, sizeof(s) - 1, 100, NULL, 0, &l);
    CHECK(l == 7 && memcmp(r, "[-|a\0b]", 7) == 0);
    free(r);
}

static void test_line_ends(void) {
    CHECK(STREAM("data: a\r\n\r\ndata: b\r\n\r\n", "[-|a][-|b]"));
    CHECK(STREAM("data: a\r\rdata: b\r\r", "[-|a][-|b]"));
    CHECK(STREAM("data: a\n\ndata: b\n\n", "[-|a][-|b]"));
    /* A \r\n cut between feeds is one line end: otherwise "a" would go out alone. */
    CHECK(STREAM("data: a\r\ndata: b\r\n\r\n", "[-|a\nb]"));
    CHECK(STREAM("data: a\r\ndata: b\rdata: c\n\r\n", "[-|a\nb\nc]"));
    /* \n\r is two line ends: the \r is a blank line. */
    CHECK(STREAM("data: a\n\rdata: b\n\n", "[-|a][-|b]"));
    CHECK(STREAM("data: a\r\n\r\n\r\n\r\ndata: b\r\n\r\n", "[-|a][-|b]"));
}

static void test_comments_and_fields(void) {
    CHECK(STREAM(": ping\n\n", ""));
    CHECK(STREAM(":\n:x\ndata: y\n: between\ndata: z\n\n", "[-|y\nz]"));
    CHECK(STREAM("id: 7\nretry: 1000\nfoo: bar\nData: no\ndata: x\n\n", "[-|x]"));
    CHECK(STREAM("data: a\ndata: b\n\n", "[-|a\nb]"));
    CHECK(STREAM("data:a\ndata:\ndata: c\n\n", "[-|a\n\nc]"));
    CHECK(STREAM("data: {\"a\": \"x:y\"}\n\n", "[-|{\"a\": \"x:y\"}]"));
}

static void test_event_field(void) {
    CHECK(STREAM("event: delta\ndata: x\n\n", "[delta|x]"));
    CHECK(STREAM("event: a\nevent: b\ndata: x\n\ndata: y\n\n", "[b|x][-|y]"));
    /* A blank line without data dispatches nothing but still clears the event type. */
    CHECK(STREAM("event: a\n\ndata: x\n\n", "[-|x]"));
    CHECK(STREAM("event: a\nevent:\ndata: x\n\n", "[-|x]"));
    CHECK(STREAM("data: x\nevent: late\n\n", "[late|x]"));
    CHECK(STREAM("event:error\r\ndata: {}\r\n\r\n", "[error|{}]"));
}

static void test_finish(void) {
    CHECK(STREAM("data: tail", "[-|tail]"));
    CHECK(STREAM("data: tail\n", "[-|tail]"));
    CHECK(STREAM("data: tail\r", "[-|tail]"));
    CHECK(STREAM("data: a\n\ndata: tail", "[-|a][-|tail]"));
    CHECK(STREAM("event: x", ""));
}

static void test_bom(void) {
    CHECK(STREAM("\xEF\xBB\xBF"
                 "data: x\n\n",
                 "[-|x]"));
    /* Only one leading BOM goes; a second one makes an unknown field. */
    CHECK(STREAM("\xEF\xBB\xBF\xEF\xBB\xBF"
                 "data: x\n\ndata: y\n\n",
                 "[-|y]"));
    /* A partial BOM is ordinary bytes. */
    CHECK(STREAM("\xEF\xBB"
                 "data: x\n\ndata: y\n\n",
                 "[-|y]"));
    CHECK(STREAM("\xEF", ""));
    CHECK(STREAM("data: \xEF\xBB\xBF\n\n", "[-|\xEF\xBB\xBF]"));
}

static void test_oversize(void) {
    /* max_event counts the event's line bytes, terminators excluded. */
    static const char s[] = "data: 0123456789012345678901234567890123456789\n\ndata: ok\n\n";
    CHECK(check_stream(s, sizeof(s) - 1, 20, "[-|ok]"));
    CHECK(check_stream(s, sizeof(s) - 1, 46, "[-|0123456789012345678901234567890123456789][-|ok]"));
    CHECK(check_stream(s, sizeof(s) - 1, 45, "[-|ok]"));
    /* Many small lines add up. */
    static const char m[] = "data: aaaa\ndata: bbbb\ndata: cccc\ndata: dddd\n\ndata: ok\n\n";
    CHECK(check_stream(m, sizeof(m) - 1, 30, "[-|ok]"));
    CHECK(check_stream(m, sizeof(m) - 1, 40, "[-|aaaa\nbbbb\ncccc\ndddd][-|ok]"));
    /* Comments count too, and a huge one never lands in memory. */
    static const char c[] =
        ": 01234567890123456789012345678901234567890123456789\ndata: x\n\ndata: ok\n\n";
    CHECK(check_stream(c, sizeof(c) - 1, 30, "[-|ok]"));
    /* An oversized last event is not dispatched by finish either. */
    static const char t[] = "data: ok\n\ndata: 0123456789012345678901234567890123456789";
    CHECK(check_stream(t, sizeof(t) - 1, 20, "[-|ok]"));
}

/* A multi-megabyte event dropped while streamed in small reads leaves memory bounded: this
 * only shows under ASan/valgrind as absence of growth, but it must at least behave. */
static void test_oversize_streamed(void) {
    out_t o = {0};
    out_add(&o, "", 0);
    sse_parser_t *p = sse_new(on_event, &o, 4096);
    char chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    sse_feed(p, "data: ", 6);
    for (int i = 0; i < 10000; i++)
        sse_feed(p, chunk, sizeof(chunk));
    sse_feed(p, "\n\ndata: after\n\n", 15);
    sse_finish(p);
    sse_free(p);
    CHECK(strcmp(o.p, "[-|after]") == 0);
    free(o.p);
}

/* A realistic OpenAI stream, to cover the zero-copy path and a reused buffer together. */
static void test_openai_stream(void) {
    static const char s[] =
        "data: "
        "{\"id\":\"c1\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
        ": keep-alive\n\n"
        "data: [DONE]\n\n";
    CHECK(STREAM(s,
                 "[-|{\"id\":\"c1\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":"
                 "\"\"}}]}][-|{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}][-|["
                 "DONE]]"));
}

/* "data:" lines skip the field search; everything that is not exactly that field must still
 * go the general way. */
static void test_data_prefix(void) {
    CHECK(STREAM("data:x\n\ndata: x\n\ndata:  x\n\ndata::x\n\n", "[-|x][-|x][-| x][-|:x]"));
    CHECK(STREAM("datax: no\ndata : no\ndat: no\ndata\n\n", "[-|]"));
    CHECK(STREAM("data:\ndata:\n\n", "[-|\n]"));
    CHECK(STREAM("data: a: b\n\n", "[-|a: b]"));
    CHECK(STREAM("data: x\nevent: e\ndata:y\n\n", "[e|x\ny]"));
}

/* A chunk stream as some servers send it: a BOM, CRLF, comments and a last event without its
 * blank line; every split must give the same events. */
static void test_crlf_stream(void) {
    static const char s[] = "\xEF\xBB\xBF: hi\r\n\r\n"
                            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
                            "data: {\"choices\":\r\ndata: []}\r\n\r\n"
                            ": keep-alive\r\n\r\n"
                            "event: done\r\ndata: [DONE]";
    CHECK(STREAM(s, "[-|{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}][-|{\"choices\":\n[]}]"
                    "[done|[DONE]]"));
}

/* A long event split over many reads, then a short one: the first is joined from the line
 * buffer, the second borrowed from the read. */
static void test_long_event_in_pieces(void) {
    size_t n = 100000;
    char *s = malloc(n + 64);
    memcpy(s, "data: ", 6);
    memset(s + 6, 'x', n);
    memcpy(s + 6 + n, "\r\n\r\ndata: y\r\n\r\n", 15);
    out_t o = {0};
    out_add(&o, "", 0);
    sse_parser_t *p = sse_new(on_event, &o, 1 << 20);
    for (size_t at = 0; at < n + 21; at += 4096)
        sse_feed(p, s + at, n + 21 - at < 4096 ? n + 21 - at : 4096);
    sse_finish(p);
    sse_free(p);
    CHECK(o.len == n + 4 + 5 && o.p[3] == 'x' && memcmp(o.p + n + 4, "[-|y]", 5) == 0);
    free(o.p);
    free(s);
}

static void test_null_safety(void) {
    sse_feed(NULL, "x", 1);
    sse_finish(NULL);
    sse_free(NULL);
    CHECK(1);
}

int main(void) {
    test_basic();
    test_nul_data();
    test_line_ends();
    test_comments_and_fields();
    test_event_field();
    test_finish();
    test_bom();
    test_oversize();
    test_oversize_streamed();
    test_openai_stream();
    test_data_prefix();
    test_crlf_stream();
    test_long_event_in_pieces();
    test_null_safety();
    return TEST_DONE();
}
