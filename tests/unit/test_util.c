/* test_util.c: the Go time formats (both ways, several zones), UUIDs, constant-time compare,
 * arenas, buffers and JSON escaping, refbufs and the log level filter. */
#include "route/util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static void set_tz(const char *tz) {
    setenv("TZ", tz, 1);
    tzset();
}

static int formats_as(int64_t ns, const char *db, const char *json) {
    char a[64], b[64];
    size_t na = util_format_db_time(a, sizeof a, ns), nb = util_format_json_time(b, sizeof b, ns);
    int ok = strcmp(a, db) == 0 && strcmp(b, json) == 0 && na == strlen(db) && nb == strlen(json);
    if (!ok) fprintf(stderr, "  got %s | %s\n", a, b);
    return ok;
}

static int parses_to(const char *text, int64_t want) {
    int64_t got = 0;
    return util_parse_db_time(text, &got) == 0 && got == want;
}

static int rejects(const char *text) {
    int64_t got;
    return util_parse_db_time(text, &got) == -1;
}

static void test_time(void) {
    const int64_t t = 1691645571123456789LL; /* 2023-08-10 05:32:51.123456789 UTC */

    set_tz("UTC0");
    CHECK(formats_as(t, "2023-08-10 05:32:51.123456789+00:00", "2023-08-10T05:32:51.123456789Z"));
    CHECK(formats_as(t - 123456789 + 500000000, "2023-08-10 05:32:51.5+00:00",
                     "2023-08-10T05:32:51.5Z"));
    CHECK(formats_as(t - 123456789, "2023-08-10 05:32:51+00:00", "2023-08-10T05:32:51Z"));
    CHECK(formats_as(t - 123456789 + 120000, "2023-08-10 05:32:51.00012+00:00",
                     "2023-08-10T05:32:51.00012Z"));
    CHECK(formats_as(-1500000000, "1969-12-31 23:59:58.5+00:00", "1969-12-31T23:59:58.5Z"));

    set_tz("CST-8");
    CHECK(formats_as(t, "2023-08-10 13:32:51.123456789+08:00",
                     "2023-08-10T13:32:51.123456789+08:00"));
    set_tz("EST5");
    CHECK(formats_as(t, "2023-08-10 00:32:51.123456789-05:00",
                     "2023-08-10T00:32:51.123456789-05:00"));
    set_tz("IST-5:30");
    CHECK(formats_as(t, "2023-08-10 11:02:51.123456789+05:30",
                     "2023-08-10T11:02:51.123456789+05:30"));

    /* Whatever the zone, the text reads back as the same instant. */
    char buf[64];
    util_format_db_time(buf, sizeof buf, t);
    CHECK(parses_to(buf, t));
    util_format_json_time(buf, sizeof buf, t);
    CHECK(parses_to(buf, t));

    CHECK(parses_to("2023-08-10 13:32:51.123456789+08:00", t));
    CHECK(parses_to("2023-08-10T05:32:51.123456789Z", t));
    CHECK(parses_to("2023-08-10 00:32:51.123456789-05:00", t));
    CHECK(parses_to("2023-08-10 05:32:51", t - 123456789)); /* CURRENT_TIMESTAMP: UTC */
    CHECK(parses_to("2023-08-10 05:32:51.5", t - 123456789 + 500000000));
    CHECK(parses_to("2023-08-10 05:32:51.1234567891234Z", t)); /* beyond ns: cut */
    CHECK(parses_to("2023-08-10 05:32", t - 51123456789LL));
    CHECK(parses_to("1970-01-01", 0));

    int64_t zero = 0;
    CHECK(util_parse_db_time("0001-01-01 00:00:00+00:00", &zero) == 0);
    CHECK(zero < 0 && util_time_is_never(zero));
    CHECK(util_parse_db_time("0001-01-01 08:05:43+08:05", &zero) == 0 && util_time_is_never(zero));
    CHECK(!util_time_is_never(t));

    CHECK(rejects(""));
    CHECK(rejects("garbage"));
    CHECK(rejects("2023-13-01 00:00:00"));
    CHECK(rejects("2023-08-10 24:00:00"));
    CHECK(rejects("2023-08-10 05:32:51."));
    CHECK(rejects("2023-08-10 05:32:51+0800"));
    CHECK(rejects("2023-08-10 05:32:51 +08:00"));
    CHECK(rejects("2023-08-10 05:32:51Zjunk"));
    CHECK(rejects("9999-01-01 00:00:00"));

    int64_t a = util_now_wall_ns(), m1 = util_now_mono_ns(), m2 = util_now_mono_ns();
    CHECK(a > t && m2 >= m1);
    set_tz("UTC0");
}

static void test_ids(void) {
    char a[37], b[37];
    util_uuid4(a);
    util_uuid4(b);
    CHECK(strlen(a) == 36 && strcmp(a, b) != 0);
    CHECK(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
    CHECK(a[14] == '4' && strchr("89ab", a[19]));
    CHECK(strspn(a, "0123456789abcdef-") == 36);

    unsigned char r[64] = {0}, zero[64] = {0};
    CHECK(util_random_bytes(r, sizeof r) == 0 && memcmp(r, zero, sizeof r) != 0);

    CHECK(util_secure_equal("token", 5, "token", 5));
    CHECK(!util_secure_equal("token", 5, "tokem", 5));
    CHECK(!util_secure_equal("token", 5, "token2", 6));
    CHECK(!util_secure_equal("", 0, "x", 1));
    CHECK(util_secure_equal("", 0, "", 0));
}

static void test_arena(void) {
    arena_t a;
    arena_init(&a);
    int aligned = 1;
    for (size_t i = 1; i < 3000; i++) {
        char *p = arena_alloc(&a, i % 37);
        aligned &= p && ((uintptr_t)p & 7) == 0;
        memset(p, 0xab, i % 37);
    }
    CHECK(aligned);
    char *small = arena_strdup(&a, "small");
    char *big = arena_alloc(&a, 100000);
    CHECK(big && ((uintptr_t)big & 7) == 0);
    memset(big, 1, 100000);
    char *after = arena_strndup(&a, "abcdef", 3);
    CHECK(strcmp(small, "small") == 0 && strcmp(after, "abc") == 0);
    char *s = arena_printf(&a, "%s-%d", "x", 42);
    CHECK(s && strcmp(s, "x-42") == 0);
    CHECK(arena_alloc(&a, SIZE_MAX) == NULL);
    arena_free(&a);
    CHECK(a.head == NULL);
    arena_free(&a);
}

static int json_is(const char *in, size_t n, const char *want) {
    buf_t b = {0};
    int ok = buf_append_json_string(&b, in, n) == 0 && strlen(want) == b.len &&
             strcmp(b.data, want) == 0;
    if (!ok) fprintf(stderr, "  got %s\n", b.data);
    buf_free(&b);
    return ok;
}

static void test_buf(void) {
    buf_t b = {0};
    CHECK(buf_appends(&b, "abc") == 0 && b.len == 3 && strcmp(b.data, "abc") == 0);
    for (int i = 0; i < 100; i++)
        buf_printf(&b, "%04d", i);
    CHECK(b.len == 403 && b.data[b.len] == '\0' && memcmp(b.data + 399, "0099", 4) == 0);
    CHECK(buf_append(&b, "\0x", 2) == 0 && b.len == 405 && b.data[403] == '\0');
    CHECK(buf_reserve(&b, SIZE_MAX) == -1);
    buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);

    CHECK(json_is("plain", 5, "\"plain\""));
    CHECK(json_is("", 0, "\"\""));
    CHECK(json_is("a\"b\\c/", 6, "\"a\\\"b\\\\c/\""));
    CHECK(json_is("l1\nl2\r\t", 7, "\"l1\\nl2\\r\\t\""));
    CHECK(json_is("\x01\x1f\0z", 4, "\"\\u0001\\u001f\\u0000z\""));
    CHECK(json_is("w\xC3\xB6rld \xF0\x9F\x98\x80 \xE2\x82\xAC", 15,
                  "\"w\xC3\xB6rld \xF0\x9F\x98\x80 \xE2\x82\xAC\""));
    CHECK(json_is("a\xff"
                  "b",
                  3, "\"a\\ufffdb\""));
    CHECK(json_is("\xC0\x80", 2, "\"\\ufffd\\ufffd\""));            /* overlong */
    CHECK(json_is("\xED\xA0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"")); /* surrogate */
    CHECK(json_is("x\xE2\x82", 3, "\"x\\ufffd\\ufffd\""));          /* cut short */
    CHECK(json_is("\x7f", 1, "\"\x7f\""));
}

static void test_refbuf(void) {
    refbuf_t *r = refbuf_new(16);
    CHECK(r && r->refs == 1 && r->cap == 16 && r->len == 0);
    memcpy(r->data, "hello", 5);
    r->len = 5;
    refbuf_retain(r);
    CHECK(r->refs == 2);
    refbuf_release(r);
    CHECK(r->refs == 1 && memcmp(r->data, "hello", 5) == 0);
    refbuf_release(r);
}

static void test_log(void) {
    FILE *tmp = tmpfile();
    int saved = dup(2);
    fflush(stderr);
    dup2(fileno(tmp), 2);
    route_log_set_level(LOG_WARN);
    route_log(LOG_INFO, "hidden %d", 1);
    route_log(LOG_WARN, "shown %d", 2);
    route_log(LOG_ERROR, "also %s", "shown");
    route_log_set_level(LOG_INFO);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    char text[512] = {0};
    rewind(tmp);
    size_t n = fread(text, 1, sizeof text - 1, tmp);
    fclose(tmp);
    CHECK(n > 0 && !strstr(text, "hidden"));
    CHECK(strstr(text, " WARN shown 2\n") && strstr(text, " ERROR also shown\n"));
    CHECK(text[4] == '-' && text[10] == 'T'); /* starts with the time */
}

int main(void) {
    test_time();
    test_ids();
    test_arena();
    test_buf();
    test_refbuf();
    test_log();
    return TEST_DONE();
}
