/* fuzz_admin_json.c: libFuzzer target for the admin API's inputs (admin.c, through the
 * parsers admin_internal.h names): the POST/PUT /admin/upstreams body, the records query and
 * the upstream id. The input goes in as a body, as the SK value inside an otherwise good body
 * (where its validity as a JSON value shows), as a query string and as an id. Whatever it is:
 *   - a body is accepted (0) or refused with 400 and a message; accepted, it is a JSON object
 *     and SK/Endpoint are NULL or NUL-terminated strings of valid UTF-8;
 *   - where the input is one JSON value, the wrapped body is refused only when it is no
 *     string or null, and SK is NULL only for null, else the string jansson decodes;
 *   - a query gives a limit in 0..1000 and an offset in 0..INT_MAX, or names "limit" or
 *     "offset" as the bad parameter; an id is accepted exactly when it is 1 to 19 digits with a
 *     value from 1 to INT64_MAX, and then is that value. */
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"
#include "fuzz_input.h"

static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        i += k;
    }
    return 1;
}

static void check_field(const char *v) {
    if (v && !valid_utf8((const unsigned char *)v, strlen(v))) abort();
}

static void check_body(const char *body, size_t len) {
    admin_upstream_body_t b;
    char err[256] = "";
    int rc = admin_parse_upstream_body(body, len, &b, err, sizeof err);
    if (rc == 0) {
        if (!json_is_object((json_t *)b.doc)) abort();
        check_field(b.sk);
        check_field(b.endpoint);
        admin_upstream_body_free(&b);
        if (b.doc || b.sk || b.endpoint) abort();
    } else if (rc != 400 || !err[0] || b.doc || b.sk || b.endpoint) {
        abort();
    }
}

static void check_wrapped(const char *in, size_t len) {
    static const char head[] = "{\"Endpoint\":\"https://e/v1\",\"sK\":";
    size_t n = sizeof head - 1 + len + 1;
    char *doc = malloc(n);
    if (!doc) abort();
    memcpy(doc, head, sizeof head - 1);
    memcpy(doc + sizeof head - 1, in, len);
    doc[n - 1] = '}';
    admin_upstream_body_t b;
    char err[256];
    int rc = admin_parse_upstream_body(doc, n, &b, err, sizeof err);
    json_t *ref = json_loadb(in, len, JSON_DECODE_ANY, NULL);
    /* The value alone parses exactly when the wrapped body does (a NUL inside stays invalid
     * both ways; jansson reads no further than the value's end in neither case). */
    int ref_ok = ref != NULL;
    if (rc == 0) {
        if (!b.endpoint) abort();
        /* Without a value of its own the input went on with more members ("a","SK":"b"),
         * which may name SK or Endpoint again: nothing more to compare then. */
        if (ref_ok) {
            if (strcmp(b.endpoint, "https://e/v1") != 0) abort();
            if (json_is_null(ref) != !b.sk) abort();
            if (b.sk && (!json_is_string(ref) || strcmp(b.sk, json_string_value(ref)) != 0))
                abort();
        }
        admin_upstream_body_free(&b);
    } else if (ref_ok && (json_is_string(ref) || json_is_null(ref))) {
        abort(); /* a good string or null was refused */
    }
    json_decref(ref);
    free(doc);
}

static void check_query(const char *q) {
    int limit = -1, offset = -1;
    char bad[256];
    if (admin_parse_records_query(q, &limit, &offset, bad, sizeof bad) == 0) {
        if (limit < 0 || limit > 1000 || offset < 0) abort();
    } else if (strncmp(bad, "invalid ", 8) != 0) {
        abort(); /* a refusal always names its parameter */
    }
}

static void check_id(const char *s, size_t n) {
    long long id = 0;
    int rc = admin_parse_upstream_id(s, n, &id);
    int digits = n >= 1 && n <= 19;
    unsigned long long v = 0;
    for (size_t i = 0; digits && i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            digits = 0;
        else
            v = v * 10 + (unsigned)(s[i] - '0');
    }
    int want = digits && v >= 1 && v <= (unsigned long long)INT64_MAX;
    if ((rc == 0) != want) abort();
    if (want && (unsigned long long)id != v) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 65536) return 0;
    char *in = fuzz_text(data, size);
    check_body(in, size);
    check_wrapped(in, size);
    if (!memchr(in, '\0', size)) check_query(in);
    check_query(NULL);
    check_id(in, size);
    free(in);
    return 0;
}
