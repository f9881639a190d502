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
    int64_t u[3];
} result_t;

static void result_free(result_t *r) {
    free(r->content);
    free(r->model);
}

static int result_eq(const result_t *a, const result_t *b) {
    if (!a->content != !b->content || a->content_len != b->content_len) return 0;
    if (a->content && memcmp(a->content, b->content, a->content_len) != 0) return 0;
    if (!a->model != !b->model || (a->model && strcmp(a->model, b->model) != 0)) return 0;
    if (a->has_usage != b->has_usage) return 0;
    return !a->has_usage || memcmp(a->u, b->u, sizeof(a->u)) == 0;
}

/* Feeds body in pieces starting at the given cut points. */
static result_t run(const char *ct, const char *body, size_t len, const size_t *cuts,
                    size_t ncuts) {
    result_t r = {0};
    extract_t *x = extract_new(ct, ct ? strlen(ct) : 0);
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
    extract_free(x);
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
    CHECK(content_is(&r, "abc"));
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

int main(void) {
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
    return TEST_DONE();
}
