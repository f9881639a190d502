/* test_body_edit.c: the forced stream_options.include_usage edit: the result for many JSON
 * shapes, every byte outside the edit unchanged, and the result valid JSON (jansson) with
 * include_usage true wherever the input was valid. */
#include "route/body_edit.h"
#include "route/sse.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

/* The edited body as a NUL-terminated string, or NULL when rc != 1. */
static char *edit(const char *body, int *rc) {
    body_edit_t e;
    size_t len = strlen(body);
    *rc = body_edit_include_usage(body, len, &e);
    if (*rc != 1) return NULL;
    size_t n = body_edit_len(len, &e);
    char *out = malloc(n + 1);
    body_edit_apply(body, len, &e, out);
    out[n] = '\0';
    /* Outside the edit, the bytes are the body's. */
    CHECK(e.at + e.cut <= len);
    CHECK(memcmp(out, body, e.at) == 0);
    CHECK(strcmp(out + e.at + e.insert_len, body + e.at + e.cut) == 0);
    return out;
}

static int include_usage_true(const char *doc) {
    json_t *j = json_loads(doc, 0, NULL);
    int ok = json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage"));
    json_decref(j);
    return ok;
}

static void expect(const char *body, int want_rc, const char *want) {
    int rc;
    char *out = edit(body, &rc);
    CHECK(rc == want_rc);
    if (rc != want_rc) fprintf(stderr, "  %s: rc %d, want %d\n", body, rc, want_rc);
    if (want) {
        CHECK(out && strcmp(out, want) == 0);
        if (out && strcmp(out, want) != 0) fprintf(stderr, "  got  %s\n  want %s\n", out, want);
        CHECK(out && include_usage_true(out));
    }
    free(out);
}

static void test_shapes(void) {
    expect("{\"model\":\"m\",\"stream\":true}", 1,
           "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    expect("{}", 1, "{\"stream_options\":{\"include_usage\":true}}");
    expect("  { }\n", 1, "  { \"stream_options\":{\"include_usage\":true}}\n");
    /* SDK formatting (indentation, spaces after colons, unicode, numbers) stays as it came. */
    expect("{\n  \"model\": \"gpt-4o\",\n  \"messages\": [{\"role\": \"user\", \"content\": "
           "\"h\\u00e9 \\\"stream_options\\\"\"}],\n  \"temperature\": 1.50e0,\n  \"stream\": "
           "true\n}\n",
           1,
           "{\n  \"model\": \"gpt-4o\",\n  \"messages\": [{\"role\": \"user\", \"content\": "
           "\"h\\u00e9 \\\"stream_options\\\"\"}],\n  \"temperature\": 1.50e0,\n  \"stream\": "
           "true\n,\"stream_options\":{\"include_usage\":true}}\n");
    /* A nested "stream_options" is not the request's. */
    expect("{\"metadata\":{\"stream_options\":{\"include_usage\":true}},\"stream\":true}", 1,
           "{\"metadata\":{\"stream_options\":{\"include_usage\":true}},\"stream\":true,"
           "\"stream_options\":{\"include_usage\":true}}");
    expect("{\"a\":[\"stream_options\",{\"stream_options\":1}]}", 1,
           "{\"a\":[\"stream_options\",{\"stream_options\":1}],\"stream_options\":{\"include_"
           "usage\":true}}");
    /* An existing stream_options object. */
    expect("{\"stream_options\":{},\"stream\":true}", 1,
           "{\"stream_options\":{\"include_usage\":true},\"stream\":true}");
    expect("{\"stream_options\": { \"continuous_usage_stats\": true } }", 1,
           "{\"stream_options\": { \"continuous_usage_stats\": true ,\"include_usage\":true} }");
    expect("{\"stream_options\":{\"include_usage\":false}}", 1,
           "{\"stream_options\":{\"include_usage\":true}}");
    expect("{\"stream_options\":{\"include_usage\" :  null , \"x\":1}}", 1,
           "{\"stream_options\":{\"include_usage\" :  true , \"x\":1}}");
    expect("{\"stream_options\":null}", 1, "{\"stream_options\":{\"include_usage\":true}}");
    /* An escaped key is the same key. */
    expect("{\"stream\\u005foptions\":{\"include\\u005fusage\":false}}", 1,
           "{\"stream\\u005foptions\":{\"include\\u005fusage\":true}}");
    /* Duplicates: the last one is the one a reader keeps, so the last one is edited. */
    expect("{\"stream_options\":{\"include_usage\":true},\"stream_options\":{}}", 1,
           "{\"stream_options\":{\"include_usage\":true},\"stream_options\":{\"include_usage\":"
           "true}}");
    expect("{\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}", 1,
           "{\"stream_options\":{\"include_usage\":true,\"include_usage\":true}}");
    /* Nothing to do: the client asked already. */
    expect("{\"stream_options\":{\"include_usage\":true}}", 0, NULL);
    expect("{\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}", 0, NULL);
    /* Types it does not touch: the upstream judges them. */
    expect("{\"stream_options\":\"yes\"}", 0, NULL);
    expect("{\"stream_options\":[]}", 0, NULL);
    expect("{\"stream_options\":{\"include_usage\":1}}", 0, NULL);
    /* Not one valid JSON object: untouched. */
    expect("", -1, NULL);
    expect("[]", -1, NULL);
    expect("\"x\"", -1, NULL);
    expect("{", -1, NULL);
    expect("{\"a\":1,}", -1, NULL);
    expect("{\"a\":1} {}", -1, NULL);
    expect("{\"a\":1}x", -1, NULL);
    expect("{\"a\":tru}", -1, NULL);
    expect("{\"stream_options\":{\"include_usage\":false}", -1, NULL);
    expect("{\"a\":\"\x80\"}", -1, NULL);
    expect("{\"a\":\"\\u0000\"}", -1, NULL);
    int rc;
    body_edit_t e;
    rc = body_edit_include_usage(NULL, 0, &e);
    CHECK(rc == -1);
    /* A NUL inside is not JSON. */
    rc = body_edit_include_usage("{\"a\":1}\0", 8, &e);
    CHECK(rc == -1);
}

/* Deep nesting: as deep as jansson takes is edited, deeper is refused, never a crash. */
static void test_depth(void) {
    for (int depth = 2040; depth <= 2050; depth++) {
        size_t n = (size_t)depth * 2 + 16;
        char *b = malloc(n);
        size_t o = 0;
        b[o++] = '{';
        memcpy(b + o, "\"a\":", 4);
        o += 4;
        for (int i = 1; i < depth; i++)
            b[o++] = '[';
        for (int i = 1; i < depth; i++)
            b[o++] = ']';
        b[o++] = '}';
        b[o] = '\0';
        json_t *j = json_loads(b, 0, NULL);
        int rc;
        char *out = edit(b, &rc);
        CHECK((j != NULL) == (rc == 1));
        if (out) CHECK(include_usage_true(out));
        json_decref(j);
        free(out);
        free(b);
    }
}

static void removed(const char *json, int want_rc, const char *want) {
    body_edit_t e;
    size_t len = strlen(json);
    int rc = body_edit_remove_null_member(json, len, "usage", &e);
    CHECK(rc == want_rc);
    if (rc != 1) return;
    char out[512];
    body_edit_apply(json, len, &e, out);
    out[body_edit_len(len, &e)] = '\0';
    CHECK(strcmp(out, want) == 0);
    if (strcmp(out, want) != 0) fprintf(stderr, "  got  %s\n  want %s\n", out, want);
    json_t *j = json_loads(out, 0, NULL);
    CHECK(json_is_object(j) && !json_object_get(j, "usage"));
    json_decref(j);
}

/* The "usage": null that forcing adds to every chunk, taken out for a client that did not ask. */
static void test_remove_usage_null(void) {
    removed("{\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":null}", 1,
            "{\"id\":\"c\",\"choices\":[{\"delta\":{}}]}");
    removed("{\"usage\":null,\"id\":\"c\"}", 1, "{\"id\":\"c\"}");
    removed("{ \"usage\" : null , \"id\":1 }", 1, "{  \"id\":1 }");
    removed("{\"a\":1 , \"usage\":null\n}", 1, "{\"a\":1 \n}");
    removed("{\"usage\":null}", 1, "{}");
    removed("{\"a\":{\"usage\":null},\"b\":\"\\\"usage\\\":null\"}", 0, NULL);
    removed("{\"usage\":{\"prompt_tokens\":1}}", 0, NULL);
    removed("{\"usage\":0}", 0, NULL);
    removed("{\"usage\":null", -1, NULL);
    removed("[]", -1, NULL);
}

static void event_data(const char *raw, int want_rc, const char *want) {
    size_t at = 0, n = 0;
    int rc = sse_event_data(raw, strlen(raw), &at, &n);
    CHECK(rc == want_rc);
    if (rc == 0) CHECK(n == strlen(want) && memcmp(raw + at, want, n) == 0);
}

static void test_event_data(void) {
    event_data("data: {\"a\":1}\n\n", 0, "{\"a\":1}");
    event_data("data:{\"a\":1}\r\n\r\n", 0, "{\"a\":1}");
    event_data("\n: ping\nevent: x\ndata:  two\rid: 3\n\n", 0, " two");
    event_data("data\n\n", 0, "");
    event_data("data: a\ndata: b\n\n", -1, NULL);
    event_data("event: x\n\n", -1, NULL);
    event_data("datum: a\n\n", -1, NULL);
}

int main(void) {
    test_remove_usage_null();
    test_event_data();
    test_shapes();
    test_depth();
    return TEST_DONE();
}
