/* test_http_headers.c: the header accumulation both llhttp adapters share: names and values
 * arriving in pieces, lower-casing, trimming, the byte and count limits, the token check. */
#include <stdio.h>
#include <string.h>

#include "../../src/http_headers.h"
#include "testlib.h"

int main(void) {
    arena_t arena;
    arena_init(&arena);
    http_headers_t h;
    http_headers_init(&h, 100, 3, 1);
    http_headers_reset(&h);

    CHECK(http_headers_on_field(&h, "Conte", 5) == HH_OK);
    CHECK(http_headers_on_field(&h, "nt-Type", 7) == HH_OK);
    CHECK(http_headers_on_value(&h, "text/", 5) == HH_OK);
    CHECK(http_headers_on_value(&h, "plain \t", 7) == HH_OK);
    CHECK(http_headers_on_complete(&h, &arena) == HH_OK);
    CHECK(h.n == 1);
    CHECK(strcmp(h.items[0].name, "content-type") == 0 && h.items[0].name_len == 12);
    CHECK(strcmp(h.items[0].value, "text/plain") == 0 && h.items[0].value_len == 10);

    CHECK(http_headers_on_field(&h, "X-Empty", 7) == HH_OK);
    CHECK(http_headers_on_complete(&h, &arena) == HH_OK); /* no value at all */
    CHECK(h.n == 2 && h.items[1].value_len == 0 && h.items[1].value[0] == '\0');
    CHECK(http_headers_find(h.items, h.n, "x-empty") == &h.items[1]);
    CHECK(http_headers_find(h.items, h.n, "x-emp") == NULL);

    /* Whitespace before the colon reaches us as part of the name: not a token. */
    CHECK(http_headers_on_field(&h, "Bad ", 4) == HH_OK);
    CHECK(http_headers_on_complete(&h, &arena) == HH_BAD_NAME);

    /* The count limit (3), then the byte limit (100 over the whole block). */
    http_headers_reset(&h);
    for (int i = 0; i < 3; i++) {
        CHECK(http_headers_on_field(&h, "a", 1) == HH_OK);
        CHECK(http_headers_on_complete(&h, &arena) == HH_OK);
    }
    CHECK(http_headers_on_field(&h, "a", 1) == HH_OK);
    CHECK(http_headers_on_complete(&h, &arena) == HH_TOO_MANY);
    http_headers_reset(&h);
    CHECK(h.n == 0 && h.bytes == 0);
    CHECK(http_headers_count(&h, 60) == HH_OK); /* a request target, say */
    CHECK(http_headers_on_field(&h, "name", 4) == HH_OK);
    char big[64];
    memset(big, 'v', sizeof(big));
    CHECK(http_headers_on_value(&h, big, sizeof(big)) == HH_TOO_LARGE);

    /* Many headers grow the array (in the arena) and keep the earlier entries. */
    http_headers_t many;
    http_headers_init(&many, 1 << 20, 0, 0);
    http_headers_reset(&many);
    char name[16];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(name, sizeof(name), "H%d", i);
        CHECK(http_headers_on_field(&many, name, (size_t)n) == HH_OK);
        CHECK(http_headers_on_value(&many, name, (size_t)n) == HH_OK);
        CHECK(http_headers_on_complete(&many, &arena) == HH_OK);
    }
    CHECK(many.n == 100);
    CHECK(strcmp(many.items[0].name, "h0") == 0 && strcmp(many.items[0].value, "H0") == 0);
    CHECK(strcmp(many.items[99].name, "h99") == 0);
    CHECK(http_headers_find(many.items, many.n, "h42") == &many.items[42]);

    http_headers_free(&h);
    http_headers_free(&many);
    arena_free(&arena);
    return TEST_DONE();
}
