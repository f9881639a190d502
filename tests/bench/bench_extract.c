/* bench_extract.c: throughput of the SSE framer and the extractor on realistic OpenAI bodies,
 * next to a jansson-per-document reference, which is what decided extract.c's scanner.
 * Run on demand (see tests/bench/README.md), never from ctest. Prints one line per case:
 *   name=<case> bytes=<input size> [events=<n>] read=<feed size> MiB/s=<best of 5> ns/event=...
 *   [fast=<SSE events on the fast path>/<events read>]
 * An argument runs that case alone (e.g. `perf record --call-graph dwarf ... extract_sse`).
 * Cases: sse_frame (framing only), extract_sse (production path), extract_sse_full (the full
 * scanner on every event: what the fast path saves), extract_sse_jansson, and
 * extract_sse_obfuscated[_full] (chunks as OpenAI sends them today, with "service_tier" and a
 * random-length "obfuscation" padding: two values change per chunk); then the JSON body and
 * request cases. */
#include "route/extract.h"
#include "route/sse.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ_SIZE 16384
#define EVENTS    2000

typedef struct {
    char *p;
    size_t len, cap;
} text_t;

static void put(text_t *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        if (!t->p) abort();
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void puts_(text_t *t, const char *s) {
    put(t, s, strlen(s));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Token-sized pieces like a model emits, with the escapes and non-ASCII text real answers have. */
static const char *const pieces[] = {
    " the",
    " model",
    ",",
    " and",
    " streaming",
    "\\n\\n",
    " r\\u00e9sum\\u00e9",
    " \\\"x\\\"",
    " code",
    "```",
    " \\u4f60\\u597d",
    " function",
    " return",
    " 42",
    " is",
    " a",
    " \\ud83d\\ude00",
    " token",
    ".",
    " of",
};

static const char chunk_head[] =
    "data: {\"id\":\"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\"object\":\"chat.completion.chunk\","
    "\"created\":1718000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_"
    "4e2b2da518\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
static const char chunk_tail[] =
    "\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";

/* A chat.completion.chunk stream with include_usage: role chunk, EVENTS content chunks, finish
 * chunk, usage chunk, [DONE]. */
static text_t make_stream(void) {
    text_t t = {0};
    puts_(&t, "data: {\"id\":\"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\"object\":"
              "\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-2024-08-06\","
              "\"system_fingerprint\":\"fp_4e2b2da518\",\"choices\":[{\"index\":0,\"delta\":{"
              "\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,"
              "\"finish_reason\":null}],\"usage\":null}\n\n");
    for (int i = 0; i < EVENTS; i++) {
        puts_(&t, chunk_head);
        puts_(&t, pieces[i % (sizeof(pieces) / sizeof(pieces[0]))]);
        puts_(&t, chunk_tail);
    }
    puts_(&t, "data: {\"id\":\"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\"object\":"
              "\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-2024-08-06\","
              "\"system_fingerprint\":\"fp_4e2b2da518\",\"choices\":[{\"index\":0,\"delta\":{},"
              "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n");
    puts_(&t, "data: {\"id\":\"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\"object\":"
              "\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-2024-08-06\","
              "\"system_fingerprint\":\"fp_4e2b2da518\",\"choices\":[],\"usage\":{"
              "\"prompt_tokens\":1200,\"completion_tokens\":2000,\"total_tokens\":3200,"
              "\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{"
              "\"reasoning_tokens\":0}}}\n\n");
    puts_(&t, "data: [DONE]\n\n");
    return t;
}

/* The same stream as OpenAI sends it today: a "service_tier" and a random-length
 * "obfuscation" padding in every chunk, so consecutive chunks differ in two places. */
static text_t make_obfuscated_stream(void) {
    text_t t = {0};
    static const char pad[] = "aZ3kP9xQ2mW7vB1";
    unsigned seed = 1;
    for (int i = 0; i < EVENTS; i++) {
        char tail[128];
        seed = seed * 1103515245u + 12345u;
        int n = 1 + (int)((seed >> 16) % 15);
        snprintf(tail, sizeof(tail),
                 "\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,"
                 "\"obfuscation\":\"%.*s\"}\n\n",
                 n, pad);
        puts_(&t,
              "data: {\"id\":\"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\"object\":"
              "\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-2024-08-06\","
              "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_4e2b2da518\","
              "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
        puts_(&t, pieces[i % (sizeof(pieces) / sizeof(pieces[0]))]);
        puts_(&t, tail);
    }
    puts_(&t, "data: [DONE]\n\n");
    return t;
}

/* A ~1 MiB chat.completion body: a long answer in message.content. */
static text_t make_json_body(void) {
    text_t t = {0};
    puts_(&t, "{\n  \"id\": \"chatcmpl-9aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",\n  \"object\": "
              "\"chat.completion\",\n  \"created\": 1718000000,\n  \"model\": "
              "\"gpt-4o-2024-08-06\",\n  \"choices\": [\n    {\n      \"index\": 0,\n      "
              "\"message\": {\n        \"role\": \"assistant\",\n        \"content\": \"");
    for (int i = 0; t.len < (1u << 20) - 400; i++)
        puts_(&t, pieces[i % (sizeof(pieces) / sizeof(pieces[0]))]);
    puts_(&t, "\",\n        \"refusal\": null\n      },\n      \"logprobs\": null,\n      "
              "\"finish_reason\": \"stop\"\n    }\n  ],\n  \"usage\": {\n    \"prompt_tokens\": "
              "1200,\n    \"completion_tokens\": 250000,\n    \"total_tokens\": 251200\n  },\n  "
              "\"system_fingerprint\": \"fp_4e2b2da518\"\n}\n");
    return t;
}

/* A ~1 MiB chat request: a long conversation, model and stream at the end. */
static text_t make_request(void) {
    text_t t = {0};
    puts_(&t, "{\"messages\":[{\"role\":\"system\",\"content\":\"You are helpful.\"}");
    for (int i = 0; t.len < (1u << 20) - 200; i++) {
        puts_(&t, i % 2 ? ",{\"role\":\"assistant\",\"content\":\""
                        : ",{\"role\":\"user\",\"content\":\"");
        for (int k = 0; k < 40; k++)
            puts_(&t, pieces[(i + k) % (sizeof(pieces) / sizeof(pieces[0]))]);
        puts_(&t, "\"}");
    }
    puts_(&t, "],\"temperature\":0.7,\"max_tokens\":4096,\"model\":\"gpt-4o\",\"stream\":true}");
    return t;
}

/* ---- the cases ---- */

typedef struct {
    size_t events, content_len;
    int has_usage;
    size_t fast, read; /* SSE events that took the fast path, of those read */
} sink_t;

static void count_event(void *ud, const char *ev, size_t evl, const char *d, size_t dl) {
    sink_t *s = ud;
    s->events++;
    s->content_len += dl;
}

static size_t run_frame(const text_t *in, sink_t *s) {
    sse_parser_t *p = sse_new(count_event, s, 4u << 20);
    for (size_t at = 0; at < in->len; at += READ_SIZE)
        sse_feed(p, in->p + at, in->len - at < READ_SIZE ? in->len - at : READ_SIZE);
    sse_finish(p);
    sse_free(p);
    return s->events;
}

static size_t run_extract(const char *ct, const text_t *in, sink_t *s, int fast) {
    extract_t *x = extract_new(ct, strlen(ct));
    extract_set_fast_path(x, fast);
    for (size_t at = 0; at < in->len; at += READ_SIZE)
        extract_feed(x, in->p + at, in->len - at < READ_SIZE ? in->len - at : READ_SIZE);
    extract_finish(x);
    size_t n = 0;
    extract_content(x, &n);
    s->content_len += n;
    s->has_usage = extract_usage(x, NULL, NULL, NULL);
    s->fast = extract_fast_events(x, &s->read);
    extract_free(x);
    return n;
}

/* The reference: what extract.c would do with jansson, one json_loadb per document. */
typedef struct {
    text_t content;
    char *model;
    int has_usage;
    size_t events;
} jref_t;

static void jref_doc(jref_t *r, const char *d, size_t dl, const char *msg_key) {
    json_t *root = json_loadb(d, dl, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return;
    }
    json_t *m = json_object_get(root, "model");
    if (!r->model && json_is_string(m) && json_string_length(m))
        r->model = strdup(json_string_value(m));
    json_t *c0 = json_array_get(json_object_get(root, "choices"), 0);
    json_t *c = json_object_get(json_object_get(c0, msg_key), "content");
    if (json_is_string(c) && r->content.len + json_string_length(c) <= EXTRACT_CONTENT_CAP)
        put(&r->content, json_string_value(c), json_string_length(c));
    json_t *u = json_object_get(root, "usage");
    if (json_is_integer(json_object_get(u, "prompt_tokens")) &&
        json_is_integer(json_object_get(u, "completion_tokens")) &&
        json_is_integer(json_object_get(u, "total_tokens")))
        r->has_usage = 1;
    json_decref(root);
}

static void jref_event(void *ud, const char *ev, size_t evl, const char *d, size_t dl) {
    jref_t *r = ud;
    r->events++;
    if (dl == 6 && memcmp(d, "[DONE]", 6) == 0) return;
    jref_doc(r, d, dl, "delta");
}

static size_t run_jansson_sse(const text_t *in, sink_t *s) {
    jref_t r = {0};
    sse_parser_t *p = sse_new(jref_event, &r, 4u << 20);
    for (size_t at = 0; at < in->len; at += READ_SIZE)
        sse_feed(p, in->p + at, in->len - at < READ_SIZE ? in->len - at : READ_SIZE);
    sse_finish(p);
    sse_free(p);
    s->content_len += r.content.len;
    s->has_usage = r.has_usage;
    free(r.content.p);
    free(r.model);
    return r.content.len;
}

static size_t run_jansson_json(const text_t *in, sink_t *s) {
    /* Buffered like extract.c does, then one parse. */
    text_t body = {0};
    for (size_t at = 0; at < in->len; at += READ_SIZE)
        put(&body, in->p + at, in->len - at < READ_SIZE ? in->len - at : READ_SIZE);
    jref_t r = {0};
    jref_doc(&r, body.p, body.len, "message");
    s->content_len += r.content.len;
    s->has_usage = r.has_usage;
    free(body.p);
    free(r.content.p);
    free(r.model);
    return r.content.len;
}

static size_t run_request(const text_t *in, sink_t *s) {
    char *model;
    int stream;
    extract_request_fields(in->p, in->len, &model, &stream);
    size_t n = model ? strlen(model) + (size_t)stream : 0;
    s->content_len += n;
    free(model);
    return n;
}

static size_t run_request_jansson(const text_t *in, sink_t *s) {
    json_t *root = json_loadb(in->p, in->len, 0, NULL);
    const char *m = json_string_value(json_object_get(root, "model"));
    char *model = m ? strdup(m) : NULL;
    int stream = json_is_true(json_object_get(root, "stream"));
    json_decref(root);
    size_t n = model ? strlen(model) + (size_t)stream : 0;
    s->content_len += n;
    free(model);
    return n;
}

static size_t run_extract_sse(const text_t *in, sink_t *s) {
    return run_extract("text/event-stream; charset=utf-8", in, s, 1);
}

/* Every event through the full scanner: what the fast path saves. */
static size_t run_extract_sse_full(const text_t *in, sink_t *s) {
    return run_extract("text/event-stream; charset=utf-8", in, s, 0);
}

static size_t run_extract_json(const text_t *in, sink_t *s) {
    return run_extract("application/json", in, s, 1);
}

typedef size_t (*case_fn)(const text_t *in, sink_t *s);

/* Set from argv[1]: only the case of that name runs (e.g. under perf record). */
static const char *only;

static void bench(const char *name, case_fn fn, const text_t *in, size_t events, size_t read,
                  size_t expect) {
    if (only && strcmp(name, only) != 0) return;
    sink_t s = {0};
    size_t got = fn(in, &s); /* warm-up, and a check that the case did its work */
    if (expect && got != expect) {
        fprintf(stderr, "%s: result %zu, expected %zu\n", name, got, expect);
        exit(1);
    }
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        size_t iters = 0;
        double t0 = now_s(), t;
        do {
            fn(in, &s);
            iters++;
            t = now_s() - t0;
        } while (t < 0.2);
        if (t / (double)iters < best) best = t / (double)iters;
    }
    printf("name=%-28s bytes=%-8zu", name, in->len);
    if (events)
        printf(" events=%-5zu", events);
    else
        printf(" %-12s", "");
    printf(" read=%-6zu MiB/s=%-8.1f", read, (double)in->len / best / (1024.0 * 1024.0));
    if (events)
        printf(" ns/event=%.0f", best * 1e9 / (double)events);
    else
        printf(" ms/body=%.3f", best * 1e3);
    if (s.read) printf(" fast=%zu/%zu", s.fast, s.read);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    only = argc > 1 ? argv[1] : NULL;
    text_t stream = make_stream(), obfuscated = make_obfuscated_stream(), body = make_json_body(),
           request = make_request();
    sink_t s = {0};
    size_t events = run_frame(&stream, &s);
    size_t want_content = run_jansson_sse(&stream, &s);
    sink_t so = {0};
    size_t obf_events = run_frame(&obfuscated, &so);
    size_t want_obf = run_jansson_sse(&obfuscated, &s);
    size_t want_body = run_jansson_json(&body, &s);
    size_t want_request = run_request_jansson(&request, &s);

    bench("sse_frame", run_frame, &stream, events, READ_SIZE, events);
    bench("extract_sse", run_extract_sse, &stream, events, READ_SIZE, want_content);
    bench("extract_sse_full", run_extract_sse_full, &stream, events, READ_SIZE, want_content);
    bench("extract_sse_jansson", run_jansson_sse, &stream, events, READ_SIZE, want_content);
    bench("extract_sse_obfuscated", run_extract_sse, &obfuscated, obf_events, READ_SIZE, want_obf);
    bench("extract_sse_obfuscated_full", run_extract_sse_full, &obfuscated, obf_events, READ_SIZE,
          want_obf);
    bench("extract_json_1mib", run_extract_json, &body, 0, READ_SIZE, want_body);
    bench("extract_json_1mib_jansson", run_jansson_json, &body, 0, READ_SIZE, want_body);
    bench("request_fields_1mib", run_request, &request, 0, request.len, want_request);
    bench("request_fields_1mib_jansson", run_request_jansson, &request, 0, request.len,
          want_request);
    free(stream.p);
    free(obfuscated.p);
    free(body.p);
    free(request.p);
    return 0;
}
