/* test_router.c: path registrations: prefix and exact matches, the longest match first,
 * trailing slashes, and the response policy headers. */
#include <stdio.h>
#include <string.h>

#include "route/router.h"
#include "testlib.h"

static void h_v1(http_request_t *req) {}
static void h_v1_files(http_request_t *req) {}
static void h_admin(http_request_t *req) {}
static void h_metrics(http_request_t *req) {}

int main(void) {
    router_t *r = router_new();
    CHECK(r != NULL);
    CHECK(router_add(r, "/v1", ROUTER_PREFIX, h_v1) == 0);
    CHECK(router_add(r, "/admin/", ROUTER_PREFIX, h_admin) == 0); /* trailing '/' ignored */
    CHECK(router_add(r, "/metrics", ROUTER_EXACT, h_metrics) == 0);
    CHECK(router_add(r, "/v1/files", ROUTER_PREFIX, h_v1_files) == 0);
    CHECK(router_add(r, "/x", ROUTER_PREFIX, NULL) == -1);

    CHECK(router_find(r, "/v1") == h_v1);
    CHECK(router_find(r, "/v1/") == h_v1);
    CHECK(router_find(r, "/v1/chat/completions") == h_v1);
    CHECK(router_find(r, "/v1x") == NULL); /* a prefix is a path segment, not a string */
    CHECK(router_find(r, "/v1/files") == h_v1_files);
    CHECK(router_find(r, "/v1/files/abc") == h_v1_files);
    CHECK(router_find(r, "/v1/filesx") == h_v1);
    CHECK(router_find(r, "/admin") == h_admin);
    CHECK(router_find(r, "/admin/upstreams/3") == h_admin);
    CHECK(router_find(r, "/metrics") == h_metrics);
    CHECK(router_find(r, "/metrics/x") == NULL); /* exact */
    CHECK(router_find(r, "/") == NULL);
    CHECK(router_find(r, "") == NULL);
    CHECK(router_find(r, "/unknown") == NULL);

    size_t len;
    const char *h = router_response_headers(r, NULL, &len);
    CHECK(len > 0 && strstr(h, "Access-Control-Allow-Origin: *\r\n") != NULL);
    CHECK(h[len - 2] == '\r' && h[len - 1] == '\n');
    router_set_cors(r, 0);
    router_response_headers(r, NULL, &len);
    CHECK(len == 0);
    router_free(r);

    /* A full table refuses more. */
    r = router_new();
    int added = 0;
    char path[16];
    for (int i = 0; i < 100; i++) {
        snprintf(path, sizeof(path), "/p%d", i);
        if (router_add(r, path, ROUTER_EXACT, h_v1) == 0) added++;
    }
    CHECK(added > 0 && added < 100);
    CHECK(router_find(r, "/p0") == h_v1);
    router_free(r);
    return TEST_DONE();
}
