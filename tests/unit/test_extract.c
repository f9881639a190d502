/* test_extract.c: response extraction (SSE chunks and JSON bodies), the content cap, content
 * types, request fields, and the scanner's agreement with jansson on awkward documents. */
#include "route/extract.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define SSE  "text/event-stream"
#define JSON "application/json"

typedef struct {
    char *content; /* NULL: none */
    size_t content_len;
    char *model;
    int has_usage;
    int64_t u[5]; /* prompt, completion, total, cached, reasoning */
    int details;
} result_t;

static void result_free(result_t *r) {
    free(r->content);
    free(r->model);
}

static int result_eq(const result_t *a, const result_t *b) {
    if (!a->content != !b->content || a->content_len != b->content_len) return 0;
    if (a->content && memcmp(a->content, b->content, a->content_len) != 0) return 0;
    if (!a->model != !b->model || (a->model && strcmp(a->model, b->model) != 0)) return 0;
    if (a->has_usage != b->has_usage || a->details != b->details) return 0;
    return !a->has_usage || memcmp(a->u, b->u, sizeof(a->u)) == 0;
}

/* Fast-path events of the last run() (SSE), and of the events read. */
static size_t last_fast, last_events;

static result_t run_mode(const char *ct, const char *body, size_t len, const size_t *cuts,
                         size_t ncuts, int fast) {
    result_t r = {0};
    extract_t *x = extract_new(ct, ct ? strlen(ct) : 0);
    extract_set_fast_path(x, fast);
    size_t at = 0;
    for (size_t i = 0; i < ncuts; i++) {
        extract_feed(x, body + at, cuts[i] - at);
        at = cuts[i];
    }
    extract_feed(x, body + at, len - at);
    extract_finish(x);
    size_t n;
    const char *c = extract_content(x, &n);
    if (c) {
        r.content = malloc(n + 1);
        memcpy(r.content, c, n);
        r.content[n] = '\0';
        r.content_len = n;
        CHECK(c[n] == '\0');
    }
    if (extract_model(x)) r.model = strdup(extract_model(x));
    r.has_usage = extract_usage(x, &r.u[0], &r.u[1], &r.u[2]);
    r.details = extract_usage_details(x, &r.u[3], &r.u[4]);
    last_fast = extract_fast_events(x, &last_events);
    extract_free(x);
    return r;
}

/* Feeds body in pieces starting at the given cut points, with the SSE fast path and without:
 * both must give the same result. */
static result_t run(const char *ct, const char *body, size_t len, const size_t *cuts,
                    size_t ncuts) {
    result_t full = run_mode(ct, body, len, cuts, ncuts, 0);
    result_t r = run_mode(ct, body, len, cuts, ncuts, 1);
    if (!result_eq(&r, &full)) fprintf(stderr, "  fast path and full scanner differ\n");
    CHECK(result_eq(&r, &full));
    result_free(&full);
    return r;
}

static result_t run1(const char *ct, const char *body) {
    return run(ct, body, strlen(body), NULL, 0);
}

/* The whole-body result, which every two-piece split and byte-at-a-time feeding must match. */
static result_t run_all_splits(const char *ct, const char *body, int *same) {
    size_t len = strlen(body);
    result_t one = run(ct, body, len, NULL, 0);
    *same = 1;
    for (size_t k = 0; k <= len; k++) {
        result_t two = run(ct, body, len, &k, 1);
        if (!result_eq(&one, &two)) {
            fprintf(stderr, "  split at %zu differs\n", k);
            *same = 0;
        }
        result_free(&two);
    }
    size_t *cuts = malloc(sizeof(size_t) * (len + 1));
    for (size_t i = 0; i + 1 < len; i++)
        cuts[i] = i + 1;
    result_t bytes = run(ct, body, len, cuts, len > 1 ? len - 1 : 0);
    if (!result_eq(&one, &bytes)) {
        fprintf(stderr, "  byte at a time differs\n");
        *same = 0;
    }
    result_free(&bytes);
    free(cuts);
    return one;
}

static int content_is(const result_t *r, const char *want) {
    return r->content && r->content_len == strlen(want) && strcmp(r->content, want) == 0;
}

static int usage_is(const result_t *r, int64_t p, int64_t c, int64_t t) {
    return r->has_usage && r->u[0] == p && r->u[1] == c && r->u[2] == t;
}

#define CHUNK(delta)                                                                               \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1709123456,"    \
    "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":" delta                         \
    ",\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"

static void test_stream(void) {
    static const char body[] = CHUNK("{\"role\":\"assistant\",\"content\":\"\"}") CHUNK(
        "{\"content\":\"Hel\"}") ": keep-alive\r\n\r\n" CHUNK("{\"content\":\"lo w\\u00f6rld\\n\"}")
        CHUNK("{\"content\":\"\xC3\xA9\\ud83d\\ude00\\\"\\\\\\/\\t\"}") CHUNK(
            "{}") "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                  "\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,"
                  "\"completion_tokens\":20,\"total_tokens\":30}}\n\n"
                  "data: [DONE]\n\n";
    int same;
    result_t r = run_all_splits(SSE, body, &same);
    CHECK(same);
    CHECK(content_is(&r, "Hello w\xC3\xB6rld\n\xC3\xA9\xF0\x9F\x98\x80\"\\/\t"));
    CHECK(r.model && strcmp(r.model, "gpt-4o-mini") == 0);
    CHECK(usage_is(&r, 10, 20, 30));
    result_free(&r);
}

static void test_stream_line_ends(void) {
    static const char crlf[] =
        "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}"
        "\r\n\r\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r\r"
        "data: {\"choices\":\r\n"
        "data: [{\"delta\":{\"content\":\"c\"}}]}\n\n";
    int same;
    result_t r = run_all_splits("text/event-stream; charset=utf-8", crlf, &same);
    CHECK(same);
    CHECK(content_is(&r, "abc"));
    CHECK(r.model && strcmp(r.model, "m") == 0);
    CHECK(!r.has_usage);
    result_free(&r);
}

static void test_stream_skips(void) {
    /* Malformed events, [DONE], non-object data and wrong types are skipped, nothing else. */
    static const char body[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\"}}]\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\"}}]}x\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"B\x80\"}}]}\n\n"
        "data: [DONE]\n\n"
        "data: [{\"choices\":[{\"delta\":{\"content\":\"BAD\"}}]}]\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":null}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":7}}]}\n\n"
        "data: {\"choices\":[{\"delta\":\"x\"}]}\n\n"
        "data: {\"choices\":{\"delta\":{\"content\":\"BAD\"}}}\n\n"
        "data: {\"choices\":[1,{\"delta\":{\"content\":\"BAD\"}}]}\n\n"
        "data: "
        "{\"choices\":[{\"delta\":{\"content\":\"b\"}},{\"delta\":{\"content\":\"BAD\"}}]}\n\n"
        "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\"},\"delta\":{\"content\":\"c\"}}]}\n\n"
        "data: {\"model\":\"\"}\n\n"
        "data: {\"model\":\"first\"}\n\n"
        "data: {\"model\":\"second\"}\n\n";
    int same;
    result_t r = run_all_splits(SSE, body, &same);
    CHECK(same);
    /* Invalid UTF-8 alone does not discard an event: its text comes with U+FFFD (issue 11). */
    CHECK(content_is(&r, "aB\xEF\xBF\xBD"
                         "bc"));
    CHECK(r.model && strcmp(r.model, "first") == 0);
    CHECK(!r.has_usage);
    result_free(&r);
}

static void test_stream_usage(void) {
    /* include_usage: null on every chunk, an object on the last one (choices empty). */
    result_t r =
        run1(SSE, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n"
                  "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
                  "\"completion_tokens\":7,\"total_tokens\":12,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"
                  "data: [DONE]\n\n");
    CHECK(content_is(&r, "x"));
    CHECK(usage_is(&r, 5, 7, 12));
    result_free(&r);

    /* The last usage wins; a later null does not erase it; incomplete ones do not count. */
    r = run1(SSE, "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,"
                  "\"total_tokens\":2}}\n\n"
                  "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,"
                  "\"total_tokens\":7}}\n\n"
                  "data: {\"usage\":null}\n\n"
                  "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
                  "data: {\"usage\":{\"prompt_tokens\":3.0,\"completion_tokens\":4,"
                  "\"total_tokens\":7}}\n\n"
                  "data: {\"usage\":{\"prompt_tokens\":\"3\",\"completion_tokens\":4,"
                  "\"total_tokens\":7}}\n\n");
    CHECK(usage_is(&r, 3, 4, 7));
    CHECK(r.content == NULL);
    CHECK(r.model == NULL);
    result_free(&r);

    /* Large and negative integers are integers. */
    r = run1(SSE, "data: {\"usage\":{\"prompt_tokens\":9223372036854775807,"
                  "\"completion_tokens\":-9223372036854775808,\"total_tokens\":0}}\n\n");
    CHECK(usage_is(&r, INT64_MAX, INT64_MIN, 0));
    result_free(&r);
    /* One past the range makes the whole event malformed, as it is to jansson. */
    r = run1(SSE, "data: {\"usage\":{\"prompt_tokens\":9223372036854775808,"
                  "\"completion_tokens\":1,\"total_tokens\":0}}\n\n");
    CHECK(!r.has_usage);
    result_free(&r);
}

static void test_legacy_text(void) {
    result_t r = run1(SSE, "data: {\"model\":\"davinci\",\"choices\":[{\"text\":\"foo\"}]}\n\n"
                           "data: {\"choices\":[{\"text\":\" bar\",\"index\":0}]}\n\n");
    CHECK(content_is(&r, "foo bar"));
    result_free(&r);
    r = run1(JSON, "{\"model\":\"davinci\",\"choices\":[{\"text\":\"done\"}]}");
    CHECK(content_is(&r, "done"));
    CHECK(r.model && strcmp(r.model, "davinci") == 0);
    result_free(&r);
}

/* Events whose content adds up past EXTRACT_CONTENT_CAP; the cut lands on a UTF-8 boundary
 * and nothing is appended after it. */
static void test_content_cap(int escaped) {
    const char *euro = escaped ? "\\u20ac" : "\xE2\x82\xAC";
    size_t per = 300, events = EXTRACT_CONTENT_CAP / (per * 3) + 5;
    extract_t *x = extract_new(SSE, strlen(SSE));
    char *ev = malloc(per * 6 + 100);
    for (size_t e = 0; e < events; e++) {
        char *p = ev + sprintf(ev, "data: {\"choices\":[{\"delta\":{\"content\":\"");
        for (size_t i = 0; i < per; i++)
            p += sprintf(p, "%s", euro);
        p += sprintf(p, "\"}}]}\n\n");
        extract_feed(x, ev, (size_t)(p - ev));
    }
    extract_feed(x, "data: {\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}\n\n", 49);
    extract_finish(x);
    size_t n;
    const char *c = extract_content(x, &n);
    CHECK(c != NULL);
    CHECK(n <= EXTRACT_CONTENT_CAP);
    CHECK(n == EXTRACT_CONTENT_CAP - EXTRACT_CONTENT_CAP % 3);
    CHECK(n % 3 == 0 && memcmp(c + n - 3, "\xE2\x82\xAC", 3) == 0);
    CHECK(c[n] == '\0');
    free(ev);
    extract_free(x);
}

static void test_content_cap_json(void) {
    /* One huge JSON string: cut inside a 4-byte character goes back to its start. */
    size_t chars = EXTRACT_CONTENT_CAP / 4 + 10;
    size_t len = chars * 4 + 100;
    char *body = malloc(len);
    char *p = body + sprintf(body, "{\"choices\":[{\"message\":{\"content\":\"a");
    for (size_t i = 0; i < chars; i++) {
        memcpy(p, "\xF0\x9F\x98\x80", 4);
        p += 4;
    }
    p += sprintf(p, "\"}}]}");
    extract_t *x = extract_new(JSON, strlen(JSON));
    extract_feed(x, body, (size_t)(p - body));
    extract_finish(x);
    size_t n;
    const char *c = extract_content(x, &n);
    CHECK(c && n == 1 + ((EXTRACT_CONTENT_CAP - 1) / 4) * 4);
    CHECK(c && memcmp(c + n - 4, "\xF0\x9F\x98\x80", 4) == 0);
    extract_free(x);
    free(body);
}

static void test_json_body(void) {
    static const char body[] =
        "{\n  \"id\": \"chatcmpl-abc\",\n  \"object\": \"chat.completion\",\n  \"created\": 1,\n"
        "  \"model\": \"gpt-4o-2024-08-06\",\n  \"choices\": [\n    {\n      \"index\": 0,\n"
        "      \"message\": {\n        \"role\": \"assistant\",\n        \"content\": \"Hello "
        "\\\"there\\\"\\n\\u4f60\\u597d\",\n        \"refusal\": null\n      },\n"
        "      \"logprobs\": null,\n      \"finish_reason\": \"stop\"\n    }\n  ],\n"
        "  \"usage\": {\n    \"prompt_tokens\": 19,\n    \"completion_tokens\": 10,\n"
        "    \"total_tokens\": 29,\n    \"completion_tokens_details\": {\"reasoning_tokens\": 0}\n"
        "  },\n  \"system_fingerprint\": \"fp_1\"\n}\n";
    int same;
    result_t r = run_all_splits("application/json; charset=utf-8", body, &same);
    CHECK(same);
    CHECK(content_is(&r, "Hello \"there\"\n\xE4\xBD\xA0\xE5\xA5\xBD"));
    CHECK(r.model && strcmp(r.model, "gpt-4o-2024-08-06") == 0);
    CHECK(usage_is(&r, 19, 10, 29));
    result_free(&r);

    /* A streaming delta in a JSON body is not the message. */
    r = run1(JSON, "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}");
    CHECK(r.content == NULL);
    result_free(&r);
    /* An error body: nothing but no harm. */
    r = run1(JSON, "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\"}}");
    CHECK(r.content == NULL && r.model == NULL && !r.has_usage);
    result_free(&r);
    /* Malformed: nothing at all, even the fields before the damage. */
    r = run1(JSON, "{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":\"x\"}}],");
    CHECK(r.content == NULL && r.model == NULL && !r.has_usage);
    result_free(&r);
    /* Empty content is content, and an empty body is nothing. */
    r = run1(JSON, "{\"choices\":[{\"message\":{\"content\":\"\"}}]}");
    CHECK(content_is(&r, ""));
    result_free(&r);
    r = run1(JSON, "");
    CHECK(r.content == NULL && r.model == NULL && !r.has_usage);
    result_free(&r);
}

static void test_json_body_too_big(void) {
    extract_t *x = extract_new(JSON, strlen(JSON));
    static const char head[] = "{\"model\":\"m\",\"pad\":\"";
    extract_feed(x, head, sizeof(head) - 1);
    char *pad = malloc(1 << 20);
    memset(pad, 'a', 1 << 20);
    for (int i = 0; i < 33; i++)
        extract_feed(x, pad, 1 << 20);
    extract_feed(x, "\"}", 2);
    extract_finish(x);
    CHECK(extract_model(x) == NULL);
    CHECK(extract_content(x, NULL) == NULL);
    free(pad);
    extract_free(x);
}

static void test_content_types(void) {
    static const char ev[] =
        "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    static const char js[] = "{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":\"x\"}}]}";
    const struct {
        const char *ct;
        const char *body;
        int want;
    } cases[] = {
        {"text/event-stream", ev, 1},
        {"text/event-stream; charset=utf-8", ev, 1},
        {"TEXT/Event-Stream;charset=UTF-8", ev, 1},
        {"text/event-stream ; charset=utf-8", ev, 1},
        {"text/event-streams", ev, 0},
        {"text/event", ev, 0},
        {"text/plain", ev, 0},
        {"application/json", js, 1},
        {"application/json; charset=utf-8", js, 1},
        {"Application/JSON", js, 1},
        {"application/jsonl", js, 0},
        {"application/x-ndjson", js, 0},
        {"application/json", ev, 0},
        {"text/event-stream", js, 0},
        {"", js, 0},
        {NULL, js, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        result_t r = run1(cases[i].ct, cases[i].body);
        int got = content_is(&r, "x") && r.model && strcmp(r.model, "m") == 0;
        if (got != cases[i].want)
            fprintf(stderr, "  content type \"%s\"\n", cases[i].ct ? cases[i].ct : "(null)");
        CHECK(got == cases[i].want);
        if (!cases[i].want) CHECK(r.content == NULL && r.model == NULL);
        result_free(&r);
    }
    /* The length bounds the type: bytes after it are not read. */
    extract_t *x = extract_new("application/jsonXYZ", 16);
    extract_feed(x, js, strlen(js));
    extract_finish(x);
    CHECK(extract_model(x) && strcmp(extract_model(x), "m") == 0);
    extract_free(x);
}

static void test_api_edges(void) {
    extract_t *x = extract_new(SSE, strlen(SSE));
    extract_finish(x);
    extract_finish(x);                                     /* twice is harmless */
    extract_feed(x, "data: {\"model\":\"late\"}\n\n", 25); /* after finish: ignored */
    CHECK(extract_model(x) == NULL);
    CHECK(extract_content(x, NULL) == NULL);
    CHECK(extract_usage(x, NULL, NULL, NULL) == 0);
    extract_free(x);
    extract_free(NULL);
    CHECK(extract_model(NULL) == NULL);
    /* finish dispatches an event that lacked its blank line */
    result_t r = run1(SSE, "data: {\"choices\":[{\"delta\":{\"content\":\"end\"}}]}");
    CHECK(content_is(&r, "end"));
    result_free(&r);
}

static void req(const char *body, const char *want_model, int want_stream) {
    char *model = (char *)"unset";
    int stream = 42;
    extract_request_fields(body, body ? strlen(body) : 0, &model, &stream);
    int ok = stream == want_stream &&
             (want_model ? model && strcmp(model, want_model) == 0 : model == NULL);
    if (!ok)
        fprintf(stderr, "  request %s: model=%s stream=%d\n", body ? body : "(null)",
                model ? model : "(null)", stream);
    CHECK(ok);
    free(model);
}

static void test_request_fields(void) {
    req("{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}"
        "]}",
        "gpt-4o", 1);
    req("{\"messages\":[],\"model\":\"gpt-4o\"}", "gpt-4o", 0);
    req("{\"messages\":[{\"model\":\"inner\",\"stream\":true}]}", NULL, 0);
    req("{\"model\":\"m\",\"stream\":false}", "m", 0);
    req("{\"model\":\"m\",\"stream\":\"true\"}", "m", 0);
    req("{\"model\":\"m\",\"stream\":1}", "m", 0);
    req("{\"model\":\"m\",\"stream\":null}", "m", 0);
    req("{\"stream\":true}", NULL, 1);
    req("{\"model\":5,\"stream\":true}", NULL, 1);
    req("{\"model\":\"gpt\\u002d4\\u00e9\"}", "gpt-4\xC3\xA9", 0);
    req("{\"mo\\u0064el\":\"escaped-key\"}", "escaped-key", 0);
    req("{\"model\":\"\"}", "", 0);
    req("{\"model\":\"a\",\"model\":\"b\",\"stream\":true,\"stream\":false}", "b", 0);
    req("{\"model\":\"a\",\"model\":null}", NULL, 0);
    req("  \r\n\t{\"model\":\"ws\"}\n ", "ws", 0);
    req("model=gpt-4&stream=true", NULL, 0);
    req("", NULL, 0);
    req(NULL, NULL, 0);
    req("[{\"model\":\"m\"}]", NULL, 0);
    req("{\"model\":\"m\",\"stream\":true} x", NULL, 0);
    req("{\"model\":\"m\",\"stream\":true", NULL, 0);
    req("{\"model\":\"m\",\"stream\":true,}", NULL, 0);
    req("{\"model\":\"m\",\"stream\":truex}", NULL, 0);
    req("{\"model\":\"m\",\"stream\":tru}", NULL, 0);
    req("{\"model\":\"m\\u0000\"}", NULL, 0);
    req("{\"model\":\"m\",\"x\":\"\\ud800\"}", NULL, 0);
    /* multipart (audio transcription) is not JSON */
    req("--boundary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n", NULL,
        0);
    /* stream and model may be NULL */
    extract_request_fields("{\"model\":\"m\"}", 13, NULL, NULL);
    CHECK(1);
}

/* 2^1024 - 2^970: the smallest decimal strtod rounds to infinity, and one below it */
#define TEXACT                                                                                     \
    "17976931348623158079372897140530341507993413271003782693617377898044496829276475"             \
    "09466490179775872070963302864166928879109465555478519404026306574886715058206819"             \
    "08902000708383676273854845817711531764475730270069855571366959622842914819860834"             \
    "936475292719074168444365510704342711559699508093042880177904174497792"
#define TMINUS1                                                                                    \
    "17976931348623158079372897140530341507993413271003782693617377898044496829276475"             \
    "09466490179775872070963302864166928879109465555478519404026306574886715058206819"             \
    "08902000708383676273854845817711531764475730270069855571366959622842914819860834"             \
    "936475292719074168444365510704342711559699508093042880177904174497791"
#define TEXACT_TAIL                                                                                \
    "79769313486231580793728971405303415079934132710037826936173778980444968292764750"             \
    "94664901797758720709633028641669288791094655554785194040263065748867150582068190"             \
    "89020007083836762738548458177115317644757302700698555713669596228429148198608349"             \
    "36475292719074168444365510704342711559699508093042880177904174497792"
#define TMINUS1_TAIL                                                                               \
    "79769313486231580793728971405303415079934132710037826936173778980444968292764750"             \
    "94664901797758720709633028641669288791094655554785194040263065748867150582068190"             \
    "89020007083836762738548458177115317644757302700698555713669596228429148198608349"             \
    "36475292719074168444365510704342711559699508093042880177904174497791"

/* Awkward documents where the scanner must say what jansson says: wrapped as the value of
 * "x" next to "model", a valid document gives the model back. */
static void test_agrees_with_jansson(void) {
    static const char *const vals[] = {
        "0",
        "-0",
        "01",
        "-",
        "1.",
        ".5",
        "1.5",
        "1e5",
        "1E+5",
        "1e-5",
        "1e",
        "1e+",
        "-01",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
        "1.0e308",
        "1e308",
        "1e309",
        "-1e309",
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.7976931348623159e308",
        /* around 2^1024 - 2^970, where strtod starts to overflow */
        TMINUS1,
        TEXACT,
        TMINUS1 ".0",
        TEXACT ".0",
        TMINUS1 ".99999",
        TEXACT ".00001",
        "1." TMINUS1_TAIL "e308",
        "1." TEXACT_TAIL "e308",
        "1." TMINUS1_TAIL "9e308",
        "0.0001" TEXACT "e-1",
        "0.0001" TMINUS1 "e-1",
        "-" TEXACT ".0",
        "-" TMINUS1 ".0",
        "0.00017976931348623159e312",
        "0.00017976931348623157e312",
        "0e99999999999999",
        "1e-99999999999",
        "0.0000e400",
        "1e99999999999999999999",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\uD83D\\uDE00\"",
        "\"\\u12\"",
        "\"\\x\"",
        "\"\\/\"",
        "\"\t\"",
        "\"\x7f\"",
        "\"\xC0\x80\"",
        "\"\xC2\x80\"",
        "\"\xE0\x80\x80\"",
        "\"\xE0\xA0\x80\"",
        "\"\xED\xA0\x80\"",
        "\"\xED\x9F\xBF\"",
        "\"\xF0\x8F\xBF\xBF\"",
        "\"\xF0\x90\x80\x80\"",
        "\"\xF4\x8F\xBF\xBF\"",
        "\"\xF4\x90\x80\x80\"",
        "\"\xF5\x80\x80\x80\"",
        "\"\xFF\"",
        "\"\xC3\"",
        "\"\xE2\x82\"",
        "true",
        "false",
        "null",
        "True",
        "nul",
        "[]",
        "{}",
        "[1,]",
        "[,1]",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{1:2}",
        "[1 2]",
        ("\xEF\xBB\xBF"
         "1"),
        "[\"a\",{\"b\":[null]}]",
    };
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char doc[2048];
        int n = snprintf(doc, sizeof(doc), "{\"model\":\"m\",\"x\":%s}", vals[i]);
        json_t *j = json_loadb(doc, (size_t)n, 0, NULL);
        char *model;
        int stream;
        extract_request_fields(doc, (size_t)n, &model, &stream);
        if (!j != !model)
            fprintf(stderr, "  disagree on %s: jansson %s, scanner %s\n", vals[i],
                    j ? "valid" : "invalid", model ? "valid" : "invalid");
        CHECK(!j == !model);
        json_decref(j);
        free(model);
    }
    /* Depth: jansson allows 2048 levels counting the scalar inside. */
    for (int depth = 2045; depth <= 2050; depth++) {
        for (int scalar = 0; scalar < 2; scalar++) {
            size_t cap = (size_t)depth * 2 + 64;
            char *doc = malloc(cap);
            size_t n = (size_t)sprintf(doc, "{\"model\":\"m\",\"x\":");
            for (int d = 2; d <= depth; d++)
                doc[n++] = '[';
            if (scalar) doc[n++] = '1';
            for (int d = 2; d <= depth; d++)
                doc[n++] = ']';
            doc[n++] = '}';
            json_t *j = json_loadb(doc, n, 0, NULL);
            char *model;
            extract_request_fields(doc, n, &model, NULL);
            CHECK(!j == !model);
            json_decref(j);
            free(model);
            free(doc);
        }
    }
}

/* ---- the SSE fast path (template match) ---- */

/* An OpenAI chunk with these content bytes (already JSON-escaped) and these tail members. */
#define OCHUNK(content, tail)                                                                      \
    "data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"    \
    "\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{"   \
    "\"content\":\"" content "\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null" tail  \
    "}\n\n"

/* Runs a stream, checks its content and how many events took the fast path. */
static void fast_case(const char *name, const char *body, const char *want, size_t want_fast) {
    int same;
    result_t r = run_all_splits(SSE, body, &same);
    result_t whole = run(SSE, body, strlen(body), NULL, 0); /* last_fast of the whole stream */
    result_free(&whole);
    int ok = same && content_is(&r, want) && last_fast == want_fast;
    if (!ok)
        fprintf(stderr, "  %s: content \"%s\" (want \"%s\"), fast %zu of %zu (want %zu)\n", name,
                r.content ? r.content : "(none)", want, last_fast, last_events, want_fast);
    CHECK(ok);
    result_free(&r);
}

static void test_fast_hits(void) {
    /* The first chunk is read in full and becomes the template; the rest match it. */
    fast_case("plain",
              OCHUNK("Hel", "") OCHUNK("lo", "") OCHUNK("", "") OCHUNK(" w\\u00f6rld", "")
                  OCHUNK("\xC3\xA9\\ud83d\\ude00", "") "data: [DONE]\n\n",
              "Hello w\xC3\xB6rld\xC3\xA9\xF0\x9F\x98\x80", 4);
    /* Padding that changes per chunk is a hole too. */
    fast_case("obfuscation",
              OCHUNK("a", ",\"obfuscation\":\"x\"") OCHUNK("b", ",\"obfuscation\":\"xyz12\"")
                  OCHUNK("c", ",\"obfuscation\":\"\"") OCHUNK("d", ",\"obfuscation\":\"\\\"\""),
              "abcd", 3);
    /* The role chunk, then content chunks, the finish chunk and the usage chunk. */
    static const char stream[] =
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
        "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
        "\"A\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
        "\"B\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},"
        "\"finish_reason\":\"stop\"}]}\n\n"
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,"
        "\"completion_tokens\":2,\"total_tokens\":3}}\n\n"
        "data: [DONE]\n\n";
    fast_case("role chunk first", stream, "AB", 1);
    result_t r = run1(SSE, stream);
    CHECK(usage_is(&r, 1, 2, 3) && r.model && strcmp(r.model, "m") == 0);
    result_free(&r);
}

/* Events that never share a shape make the fast path back off; once the shape settles it is
 * found again within 64 events. */
static void test_fast_backoff(void) {
    size_t cap = 300 * 200, len = 0;
    char *body = malloc(cap);
    for (int i = 0; i < 200; i++)
        len += (size_t)sprintf(body + len,
                               "data: {\"choices\":[{\"delta\":{\"content\":\"x\"},"
                               "\"logprobs\":{\"n\":[%d]}}]}\n\n",
                               i < 100 ? i : 7);
    result_t r = run(SSE, body, len, NULL, 0);
    CHECK(r.content_len == 200);
    /* The first 100 miss (tried less and less often), the last 100 hit but for the wait. */
    CHECK(last_events == 200 && last_fast >= 100 - 64 - 2 && last_fast < 100);
    result_free(&r);
    free(body);
}

/* A key inside a string value is text: the fast path never searches for keys, and whatever
 * a changed string holds, it is matched as one string. */
static void test_fast_keys_in_strings(void) {
    fast_case("content holding keys",
              OCHUNK("a", "") OCHUNK("\\\"},\\\"content\\\":\\\"evil", "")
                  OCHUNK("\\\"content\\\":\\\"", "") OCHUNK("b", ""),
              "a\"},\"content\":\"evil\"content\":\"b", 3);
    /* An id that holds a whole chunk; a content that holds its closing quote's neighbours. */
    static const char ids[] =
        "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"id\":\"{\\\"choices\\\":[{\\\"delta\\\":{\\\"content\\\":\\\"BAD\\\"}}]}\","
        "\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"
        "data: {\"id\":\"\\\\\",\"choices\":[{\"delta\":{\"content\":\"c\\\\\"}}]}\n\n"
        "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"\\\\\\\"d\"}}]}\n\n";
    fast_case("id holding a chunk", ids, "abc\\\\\"d", 3);
}

/* A hole that changes type, a literal that changes, a key that changes: the scanner decides. */
static void test_fast_shape_changes(void) {
    /* OCHUNK's id becomes a number, its content null, then back. */
    /* clang-format off */
    static const char types[] =
        OCHUNK("a", "")
        OCHUNK("b", "")
        "data: {\"id\":7,\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
        "\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"c\"},\"logprobs\":null,\"finish_reason\":null}],"
        "\"usage\":null}\n\n"
        "data: {\"id\":7,\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
        "\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":null},\"logprobs\":null,\"finish_reason\":null}],"
        "\"usage\":null}\n\n"
        OCHUNK("d", "");
    /* clang-format on */
    fast_case("types", types, "abcd", 1);
    /* Numbers: longer, shorter, a real, a sign; the template learns each new shape. */
    static const char nums[] =
        "data: {\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"created\":12,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n"
        "data: {\"created\":1,\"choices\":[{\"index\":10,\"delta\":{\"content\":\"c\"}}]}\n\n"
        "data: {\"created\":-1.5e3,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"d\"}}]}\n\n"
        "data: {\"created\":1e,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"BAD\"}}]}\n\n"
        "data: {\"created\":01,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"BAD\"}}]}\n\n"
        "data: {\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"e\"}}]}\n\n";
    fast_case("numbers", nums, "abcde", 4);
    /* A later model is not the model (the first one wins), whatever path reads it. */
    result_t r = run1(SSE, "data: {\"model\":\"one\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}"
                           "\n\ndata: {\"model\":\"two\",\"choices\":[{\"delta\":{\"content\":"
                           "\"b\"}}]}\n\n");
    CHECK(content_is(&r, "ab") && r.model && strcmp(r.model, "one") == 0);
    result_free(&r);
    /* A key that changes is structure, not a hole. */
    fast_case(
        "keys",
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"contend\":\"BAD\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}],\"x\":{\"content\":\"BAD\"}}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"d\"}}],\"x\":{\"content\":\"EVIL\"}}\n\n",
        "abcd", 1);
}

/* Documents of the template's shape but damaged: skipped, and the template still serves. */
#define OBODY(content)                                                                             \
    "{\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"          \
    "\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{"   \
    "\"content\":\"" content "\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null"

static void test_fast_malformed(void) {
    /* clang-format off */
    static const char body[] =
        /* the template */
        "data: " OBODY("a") "}\n\n"
        /* bad strings in the content hole */
        "data: " OBODY("B\x80") "}\n\n"
        "data: " OBODY("B\\x") "}\n\n"
        "data: " OBODY("B\x01") "}\n\n"
        "data: " OBODY("B\\ud800") "}\n\n"
        "data: " OBODY("B\\u0000") "}\n\n"
        "data: " OBODY("B\\") "}\n\n"
        /* cut, one brace too many, trailing bytes */
        "data: " OBODY("B") "\n\n"
        "data: " OBODY("B") "}}\n\n"
        "data: " OBODY("B") "} x\n\n"
        /* still the template */
        "data: " OBODY("b") "}\n\n"
        /* a second, empty data line: a '\n' at the end, valid but another shape */
        "data: " OBODY("c") "}\ndata: \n\n"
        "data: " OBODY("d") "}\n\n";
    /* clang-format on */
    fast_case("damaged", body,
              "aB\xEF\xBF\xBD"
              "bcd",
              1);
}

/* Duplicate keys: the last one wins on both paths, also when only the first one changes. */
static void test_fast_duplicates(void) {
    fast_case(
        "content twice",
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\",\"content\":\"a\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\",\"content\":\"b\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\",\"content\":\"\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"c\",\"content\":null}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\"},\"delta\":{\"content\":\"d\"}}]}"
        "\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"BAD\"},\"delta\":{\"content\":"
        "\"e\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"BAD\"}}],\"choices\":[{\"text\":\"f\"}]}"
        "\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"BAD\"}}],\"choices\":[{\"text\":"
        "\"g\"}]}\n\n",
        "abdefg", 4);
}

/* Token counts that change on every chunk (continuous usage stats) are holes; a count that
 * stops being an integer, or an incomplete usage, goes to the scanner. */
static void test_fast_usage(void) {
#define UCHUNK(c, p, q, t)                                                                         \
    "data: {\"choices\":[{\"delta\":{\"content\":\"" c "\"}}],\"usage\":{\"prompt_tokens\":" p     \
    ",\"completion_tokens\":" q ",\"total_tokens\":" t "}}\n\n"
    static const char body[] = UCHUNK("a", "5", "1", "6") UCHUNK("b", "5", "2", "7")
        UCHUNK("c", "5", "3", "8") UCHUNK("d", "5", "40", "45") UCHUNK("e", "5", "4.0", "9");
    fast_case("usage", body, "abcde", 3);
    result_t r = run1(SSE, body);
    CHECK(usage_is(&r, 5, 40, 45));
    result_free(&r);
    r = run1(SSE, UCHUNK("a", "5", "1", "6") UCHUNK("b", "5", "-9223372036854775808", "7"));
    CHECK(usage_is(&r, 5, INT64_MIN, 7));
    result_free(&r);
    /* A count that is a real in the template is no hole: the integer after it is read by the
     * scanner (an inert hole used to take it and keep the template's "not a count"). */
    r = run1(SSE,
             UCHUNK("a", "5", "1.5", "6") UCHUNK("b", "5", "2", "7") UCHUNK("c", "5", "3", "8"));
    CHECK(usage_is(&r, 5, 3, 8) && content_is(&r, "abc"));
    result_free(&r);
    r = run1(SSE, UCHUNK("a", "5", "1", "6") UCHUNK("b", "5", "9223372036854775808", "7"));
    CHECK(usage_is(&r, 5, 1, 6) && content_is(&r, "a"));
    result_free(&r);
#undef UCHUNK
}

/* Framing around the fast path: CRLF, a BOM, data split over lines, comments between. */
static void test_fast_framing(void) {
    fast_case("crlf and bom",
              "\xEF\xBB\xBF"
              "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
              ": keep-alive\r\n\r\n"
              "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r\n\r\n"
              "event: x\r\nid: 3\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\r\r"
              "data: {\"choices\":\r\ndata: [{\"delta\":{\"content\":\"d\"}}]}\n\n"
              "data: {\"choices\":\ndata: [{\"delta\":{\"content\":\"e\"}}]}\n\n",
              "abcde", 3);
    /* Pretty-printed documents are templates like any other. */
    fast_case(
        "pretty",
        "data: {\ndata:   \"choices\": [ { \"delta\": { \"content\": \"a\" } } ]\ndata: }\n\n"
        "data: {\ndata:   \"choices\": [ { \"delta\": { \"content\": \"b\" } } ]\ndata: }\n\n"
        "data: {\ndata:   \"choices\": [ { \"delta\": { \"content\": \"c\" } } ] \ndata: }\n\n",
        "abc", 1);
}

/* Large events: a long content is no obstacle (the template keeps it empty); a shape larger
 * than the template's cap is read in full every time; too many holes leave some literal. */
static void test_fast_large(void) {
    size_t big = 200000;
    char *ev = malloc(big + 200), *stream = malloc(3 * (big + 200) + 1);
    size_t sl = 0;
    for (int k = 0; k < 3; k++) {
        int n = sprintf(ev, "data: {\"choices\":[{\"delta\":{\"content\":\"");
        memset(ev + n, 'a' + k, big);
        n += (int)big;
        n += sprintf(ev + n, "\"}}]}\n\n");
        memcpy(stream + sl, ev, (size_t)n);
        sl += (size_t)n;
    }
    stream[sl] = '\0';
    result_t r = run(SSE, stream, sl, NULL, 0);
    CHECK(r.content && r.content_len == 3 * big && r.content[big] == 'b' && last_fast == 2);
    result_free(&r);

    /* A 5000-byte id: no template, every event read in full. */
    sl = 0;
    for (int k = 0; k < 3; k++) {
        int n = sprintf(ev, "data: {\"id\":\"");
        memset(ev + n, 'i', 5000);
        n += 5000;
        n += sprintf(ev + n, "\",\"choices\":[{\"delta\":{\"content\":\"%c\"}}]}\n\n", 'a' + k);
        memcpy(stream + sl, ev, (size_t)n);
        sl += (size_t)n;
    }
    stream[sl] = '\0';
    r = run(SSE, stream, sl, NULL, 0);
    CHECK(content_is(&r, "abc") && last_fast == 0);
    result_free(&r);

    /* 40 inert members before the content: the first ones are holes, the rest literal, and
     * the content (a role) still fits; 40 after it: the same. */
    for (int after = 0; after < 2; after++) {
        sl = 0;
        for (int k = 0; k < 4; k++) {
            char *p = ev + sprintf(ev, "data: {");
            if (!after)
                for (int i = 0; i < 40; i++)
                    p += sprintf(p, "\"k%d\":%d,", i, k == 3 && i == 39 ? 7 : i);
            p += sprintf(p, "\"choices\":[{\"delta\":{\"content\":\"%c\"}}]", 'a' + k);
            if (after)
                for (int i = 0; i < 40; i++)
                    p += sprintf(p, ",\"k%d\":\"%d\"", i, k == 3 && i == 39 ? 7 : i);
            p += sprintf(p, "}\n\n");
            memcpy(stream + sl, ev, (size_t)(p - ev));
            sl += (size_t)(p - ev);
        }
        stream[sl] = '\0';
        r = run(SSE, stream, sl, NULL, 0);
        /* The last event changes member 39, which is literal: read in full. */
        CHECK(content_is(&r, "abcd") && last_fast == 2);
        result_free(&r);
    }
    free(ev);
    free(stream);
}

/* ---- issue 10: the Responses API, usage subsets, usage-only chunks, event ends ---- */

static void test_responses_json(void) {
    static const char body[] =
        "{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-4o-2024\",\"output\":["
        "{\"type\":\"reasoning\",\"id\":\"rs_1\",\"summary\":[]},"
        "{\"type\":\"message\",\"id\":\"msg_1\",\"role\":\"assistant\",\"content\":["
        "{\"type\":\"output_text\",\"text\":\"Hel\",\"annotations\":[]},"
        "{\"type\":\"refusal\",\"refusal\":\"no\"},"
        "{\"text\":\"lo\\u0021\",\"type\":\"output\\u005ftext\"}]}],"
        "\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":8},"
        "\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":64},"
        "\"total_tokens\":123}}";
    int same;
    result_t r = run_all_splits(JSON, body, &same);
    CHECK(same);
    CHECK(content_is(&r, "Hello!"));
    CHECK(r.model && strcmp(r.model, "gpt-4o-2024") == 0);
    CHECK(usage_is(&r, 36, 87, 123));
    CHECK(r.details == (EXTRACT_HAS_CACHED | EXTRACT_HAS_REASONING));
    CHECK(r.u[3] == 8 && r.u[4] == 64);
    result_free(&r);
    /* No output_text part: no text. */
    r = run1(JSON, "{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"refusal\"}]}]}");
    CHECK(!r.content);
    result_free(&r);
    /* An item's content given twice: the last one counts, as in any JSON reader. */
    r = run1(JSON, "{\"output\":[{\"content\":[{\"type\":\"output_text\",\"text\":\"BAD\"}],"
                   "\"content\":[{\"type\":\"output_text\",\"text\":\"ok\"}]}]}");
    CHECK(content_is(&r, "ok"));
    result_free(&r);
}

#define REV(type, rest) "event: " type "\ndata: {\"type\":\"" type "\"" rest "}\n\n"
#define RDELTA(seq, d)                                                                             \
    REV("response.output_text.delta",                                                              \
        ",\"sequence_number\":" seq ",\"item_id\":\"msg_67c\","                                    \
        "\"output_index\":0,\"content_index\":0,\"delta\":\"" d "\"")

static void test_responses_stream(void) {
    static const char body[] = REV("response.created",
                                   ",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\","
                                   "\"model\":\"gpt-4.1-2025\",\"output\":[],\"usage\":null}")
        REV("response.output_item.added", ",\"item\":{\"type\":\"message\",\"content\":[]}") RDELTA(
            "4", "Hi") RDELTA("5", " the") RDELTA("6", "re") RDELTA("7", "!")
            REV("response.output_text.done", ",\"text\":\"Hi there!\"") REV(
                "response.completed",
                ",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\","
                "\"model\":\"gpt-4.1-2025\",\"output\":[{\"type\":\"message\",\"content\":["
                "{\"type\":\"output_text\",\"text\":\"Hi there!\"}]}],\"usage\":{\"input_tokens\":"
                "12,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":4,"
                "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":16}}");
    int same;
    result_t r = run_all_splits(SSE, body, &same);
    CHECK(same);
    CHECK(content_is(&r, "Hi there!")); /* the deltas once, not the done events' repeats */
    CHECK(r.model && strcmp(r.model, "gpt-4.1-2025") == 0);
    CHECK(usage_is(&r, 12, 4, 16));
    CHECK(r.details == (EXTRACT_HAS_CACHED | EXTRACT_HAS_REASONING) && r.u[3] == 0);
    result_free(&r);
    /* The deltas take the fast path. */
    fast_case("responses deltas",
              RDELTA("1", "a") RDELTA("2", "b") RDELTA("3", "c") RDELTA("14", "d\\n"), "abcd\n", 3);
    /* Another type's delta is not text. */
    r = run1(SSE, "data: {\"type\":\"response.refusal.delta\",\"delta\":\"no\"}\n\n"
                  "data: {\"delta\":\"x\",\"type\":\"response.output_text.delta\"}\n\n");
    CHECK(content_is(&r, "x"));
    result_free(&r);
}

static void test_usage_details(void) {
    /* Chat Completions names, in the usage-only chunk; and all-zero details are reported. */
    static const char body[] = CHUNK(
        "{\"content\":\"a\"}") "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,"
                               "\"completion_tokens\":300,\"total_tokens\":320,\"prompt_tokens_"
                               "details\":"
                               "{\"cached_tokens\":16,\"audio_tokens\":0},\"completion_tokens_"
                               "details\":"
                               "{\"reasoning_tokens\":256,\"audio_tokens\":0}}}\n\n"
                               "data: [DONE]\n\n";
    int same;
    result_t r = run_all_splits(SSE, body, &same);
    CHECK(same && usage_is(&r, 20, 300, 320) && r.u[3] == 16 && r.u[4] == 256);
    CHECK(r.details == (EXTRACT_HAS_CACHED | EXTRACT_HAS_REASONING));
    result_free(&r);
    /* Embeddings: prompt and total only. */
    r = run1(JSON, "{\"object\":\"list\",\"data\":[],\"model\":\"text-embedding-3-small\","
                   "\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}");
    CHECK(usage_is(&r, 8, 0, 8) && r.details == 0);
    CHECK(r.model && strcmp(r.model, "text-embedding-3-small") == 0);
    result_free(&r);
    /* A completion count of the wrong type spoils the usage; a detail of the wrong type is
     * just not reported. */
    r = run1(JSON,
             "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":\"2\",\"total_tokens\":3}}");
    CHECK(!r.has_usage);
    result_free(&r);
    r = run1(JSON, "{\"usage\":{\"prompt_tokens\":1,\"total_tokens\":3,\"prompt_tokens_details\":"
                   "{\"cached_tokens\":null}}}");
    CHECK(usage_is(&r, 1, 0, 3) && r.details == 0);
    result_free(&r);
    /* Continuous usage with details on every chunk: the fast path keeps up with the counts. */
#define DCHUNK(c, k)                                                                               \
    "data: {\"choices\":[{\"delta\":{\"content\":\"" c "\"}}],\"usage\":{\"prompt_tokens\":5,"     \
    "\"completion_tokens\":1,\"total_tokens\":6,\"prompt_tokens_details\":{\"cached_tokens\":" k   \
    "}}}\n\n"
    fast_case("details", DCHUNK("a", "1") DCHUNK("b", "2") DCHUNK("c", "3"), "abc", 2);
    r = run1(SSE, DCHUNK("a", "1") DCHUNK("b", "2") DCHUNK("c", "3"));
    CHECK(r.details == EXTRACT_HAS_CACHED && r.u[3] == 3);
    result_free(&r);
#undef DCHUNK
}

/* The event ends a by-events forwarder cuts at, with the usage-only chunk marked. */
typedef struct {
    size_t base; /* offset of the current feed in the stream */
    size_t ends[16];
    int usage_only[16];
    int n;
} cuts_t;

static void on_cut(void *ud, size_t end, int usage_only) {
    cuts_t *c = ud;
    if (c->n < 16) {
        c->ends[c->n] = c->base + end;
        c->usage_only[c->n] = usage_only;
    }
    c->n++;
}

static void test_event_ends(void) {
    static const char body[] =
        ": keep-alive\n\n" CHUNK("{\"content\":\"a\"}") "data: "
                                                        "{\"choices\":[],\"usage\":{\"prompt_"
                                                        "tokens\":1,\"completion_tokens\":1,"
                                                        "\"total_tokens\":2}}\r\n\r\n"
                                                        "data: {\"choices\":[],\"usage\":null}\n\n"
                                                        "data: [DONE]\n\n";
    size_t len = strlen(body);
    const char *e1 = strstr(body, "\n\n") + 2;
    const char *e2 = strstr(e1, "\n\n") + 2;
    const char *e3 = strstr(e2, "\r\n\r\n") + 4;
    const char *e4 = strstr(e3, "\n\n") + 2;
    size_t want[5] = {(size_t)(e1 - body), (size_t)(e2 - body), (size_t)(e3 - body),
                      (size_t)(e4 - body), len};
    int want_usage[5] = {0, EXTRACT_EVENT_USAGE_NULL, EXTRACT_EVENT_USAGE_ONLY,
                         EXTRACT_EVENT_USAGE_NULL, 0};
    /* A CRLF cut between its CR and LF ends the event at the CR: the LF goes with the next
     * bytes (a stray line end, which SSE ignores). */
    size_t crlf_cut = want[2] - 1;
    for (size_t step = 1; step <= len; step++) {
        extract_t *x = extract_new(SSE, strlen(SSE));
        cuts_t c = {0};
        extract_set_cut_cb(x, on_cut, &c);
        int done_before_end = 0;
        for (size_t at = 0; at < len; at += step) {
            c.base = at;
            size_t n = len - at < step ? len - at : step;
            int want_b = at == 0 || at == want[0] || at == want[1] || at == want[2] ||
                         at == want[3] || at == crlf_cut;
            if (extract_at_event_boundary(x) != want_b)
                fprintf(stderr, "  step %zu: boundary at %zu: %d\n", step, at, !want_b);
            CHECK(extract_at_event_boundary(x) == want_b);
            extract_feed(x, body + at, n);
            if (at + n < len && extract_saw_done(x)) done_before_end = 1;
        }
        CHECK(extract_at_event_boundary(x));
        CHECK(extract_saw_done(x) && !done_before_end);
        CHECK(c.n == 5);
        for (int i = 0; i < 5 && i < c.n; i++) {
            if (i == 2 && c.ends[i] == crlf_cut && crlf_cut % step == 0) c.ends[i]++;
            if (c.ends[i] != want[i] || c.usage_only[i] != want_usage[i])
                fprintf(stderr, "  step %zu: end %d at %zu usage %d (want %zu %d)\n", step, i,
                        c.ends[i], c.usage_only[i], want[i], want_usage[i]);
            CHECK(c.ends[i] == want[i] && c.usage_only[i] == want_usage[i]);
        }
        extract_free(x);
    }
}

/* Issue 11: a body whose only fault is invalid UTF-8 keeps its text (U+FFFD for each bad
 * sequence, maximal subparts) and its tokens. */
static void test_invalid_utf8(void) {
    static const char body[] = "{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":"
                               "\"caf\xC3 ok \xE2\x82 \xF0\x9F\x98\x80 \xFF\xC0\xAF end\"}}],"
                               "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,"
                               "\"total_tokens\":10}}";
    result_t r = run1(JSON, body);
    CHECK(content_is(&r, "caf\xEF\xBF\xBD ok \xEF\xBF\xBD \xF0\x9F\x98\x80 "
                         "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD end"));
    CHECK(usage_is(&r, 4, 6, 10));
    CHECK(r.model && strcmp(r.model, "m") == 0);
    result_free(&r);
    /* Still malformed JSON after the repair: nothing. */
    r = run1(JSON, "{\"choices\":[{\"message\":{\"content\":\"\xC3\"}}]");
    CHECK(!r.content && !r.has_usage);
    result_free(&r);
}

int main(void) {
    test_responses_json();
    test_responses_stream();
    test_usage_details();
    test_event_ends();
    test_invalid_utf8();
    test_stream();
    test_stream_line_ends();
    test_stream_skips();
    test_stream_usage();
    test_legacy_text();
    test_content_cap(0);
    test_content_cap(1);
    test_content_cap_json();
    test_json_body();
    test_json_body_too_big();
    test_content_types();
    test_api_edges();
    test_request_fields();
    test_agrees_with_jansson();
    test_fast_hits();
    test_fast_backoff();
    test_fast_keys_in_strings();
    test_fast_shape_changes();
    test_fast_malformed();
    test_fast_duplicates();
    test_fast_usage();
    test_fast_framing();
    test_fast_large();
    return TEST_DONE();
}
