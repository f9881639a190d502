/* fuzz_body_edit.c: libFuzzer target for the forced include_usage edit (body_edit.c). For any
 * bytes: an edit keeps every byte outside it, and its result is valid JSON (jansson) with
 * stream_options.include_usage true whenever the input was a valid JSON object; "nothing to
 * do" only for a valid object whose include_usage is true already or whose stream_options or
 * include_usage has a type the edit leaves alone; "not JSON" only for what jansson refuses
 * too (or, the scanner's one difference, a NUL right after a number or literal). The input
 * is also tried as a request body around a value: {"stream":true,"stream_options":INPUT}. */
#include "route/body_edit.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check(const char *in, size_t size) {
    int has_nul = memchr(in, '\0', size) != NULL;
    body_edit_t e;
    int rc = body_edit_include_usage(in, size, &e);
    json_t *orig = json_loadb(in, size, 0, NULL);
    int valid = json_is_object(orig);
    if (rc == 1) {
        if (!valid) abort();
        if (e.at > size || e.cut > size - e.at) abort();
        size_t n = body_edit_len(size, &e);
        char *out = malloc(n ? n : 1);
        if (!out) abort();
        body_edit_apply(in, size, &e, out);
        if (memcmp(out, in, e.at) != 0 ||
            memcmp(out + e.at + e.insert_len, in + e.at + e.cut, size - e.at - e.cut) != 0)
            abort();
        json_t *j = json_loadb(out, n, 0, NULL);
        if (!json_is_object(j)) abort();
        if (!json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage")))
            abort();
        /* Nothing else changed: the other members are the same values. */
        json_object_del(j, "stream_options");
        json_object_del(orig, "stream_options");
        if (!json_equal(j, orig)) abort();
        json_decref(j);
        free(out);
    } else if (rc == 0) {
        if (!valid) abort();
        json_t *so = json_object_get(orig, "stream_options");
        json_t *iu = json_object_get(so, "include_usage");
        int asked = json_is_true(iu);
        int other_type = so && !json_is_object(so) && !json_is_null(so);
        int other_iu = iu && !json_is_boolean(iu) && !json_is_null(iu);
        if (!asked && !other_type && !other_iu) abort();
    } else if (rc == -1) {
        if (valid && !has_nul) abort();
    } else {
        abort();
    }
    json_decref(orig);

    /* The other edit: a top-level "usage": null removed, the rest the same document. */
    rc = body_edit_remove_null_member(in, size, "usage", &e);
    orig = json_loadb(in, size, 0, NULL);
    valid = json_is_object(orig);
    if (rc == 1) {
        if (!valid || !json_is_null(json_object_get(orig, "usage"))) abort();
        size_t n = body_edit_len(size, &e);
        char *out = malloc(n ? n : 1);
        if (!out) abort();
        body_edit_apply(in, size, &e, out);
        json_t *j = json_loadb(out, n, 0, NULL);
        json_object_del(orig, "usage");
        /* A repeated "usage" keeps its earlier copies: compare without any. */
        json_object_del(j, "usage");
        if (!json_is_object(j) || !json_equal(j, orig)) abort();
        json_decref(j);
        free(out);
    } else if (rc == 0) {
        if (!valid || json_is_null(json_object_get(orig, "usage"))) abort();
    } else if (rc != -1 || (valid && !has_nul)) {
        abort();
    }
    json_decref(orig);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *in = (const char *)data;
    check(in, size);
    static const char pre[] = "{\"stream\":true,\"stream_options\":", post[] = "}";
    if (size <= 65536) {
        size_t n = sizeof(pre) - 1 + size + sizeof(post) - 1;
        char *b = malloc(n);
        if (!b) abort();
        memcpy(b, pre, sizeof(pre) - 1);
        memcpy(b + sizeof(pre) - 1, in, size);
        memcpy(b + sizeof(pre) - 1 + size, post, sizeof(post) - 1);
        check(b, n);
        free(b);
    }
    return 0;
}
