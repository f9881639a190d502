/* router.c: path registrations and the shared response policy.
 *
 * Owns: the table of path -> handler (longest match first), answering OPTIONS preflights,
 * the CORS header lines every response carries, and the 404 for unknown paths.
 * Must not: parse HTTP or touch connections (http1_server.c does), or know any handler's
 * module (they are registered by main.c). */
#include "route/router.h"

#include <stdlib.h>
#include <string.h>

#define ROUTES_MAX 32

static const char CORS_HEADERS[] =
    "Access-Control-Allow-Origin: *\r\n"
    "Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE, PATCH\r\n"
    "Access-Control-Allow-Headers: Origin, Authorization, Content-Type\r\n";

typedef struct route_entry {
    char *path;
    size_t len;
    int match;
    route_handler_fn fn;
} route_entry_t;

struct router {
    route_entry_t routes[ROUTES_MAX];
    size_t n;
    int cors;
};

router_t *router_new(void) {
    router_t *r = calloc(1, sizeof(*r));
    if (r) r->cors = 1;
    return r;
}

void router_free(router_t *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++)
        free(r->routes[i].path);
    free(r);
}

int router_add(router_t *r, const char *path, int match, route_handler_fn fn) {
    if (r->n >= ROUTES_MAX || !fn) return -1;
    size_t len = strlen(path);
    while (len > 0 && path[len - 1] == '/')
        len--;
    char *copy = malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, path, len);
    copy[len] = '\0';
    /* Kept longest first, so the first match is the most specific. */
    size_t at = 0;
    while (at < r->n && r->routes[at].len >= len)
        at++;
    memmove(&r->routes[at + 1], &r->routes[at], (r->n - at) * sizeof(r->routes[0]));
    r->routes[at] = (route_entry_t){.path = copy, .len = len, .match = match, .fn = fn};
    r->n++;
    return 0;
}

route_handler_fn router_find(const router_t *r, const char *path) {
    size_t plen = strlen(path);
    for (size_t i = 0; i < r->n; i++) {
        const route_entry_t *e = &r->routes[i];
        if (plen < e->len || memcmp(path, e->path, e->len) != 0) continue;
        if (plen == e->len) return e->fn;
        if (e->match == ROUTER_PREFIX && (path[e->len] == '/' || e->len == 0)) return e->fn;
    }
    return NULL;
}

void router_dispatch(const router_t *r, http_request_t *req) {
    if (r->cors && strcmp(http_request_method(req), "OPTIONS") == 0) {
        http_response_start(req, 200, NULL, 0, 0);
        http_response_end(req);
        return;
    }
    route_handler_fn fn = router_find(r, http_request_path(req));
    if (fn)
        fn(req);
    else
        http_respond_error(req, 404, "invalid_request_error", "not found");
}

const char *router_response_headers(const router_t *r, size_t *len) {
    if (!r || !r->cors) {
        *len = 0;
        return "";
    }
    *len = sizeof(CORS_HEADERS) - 1;
    return CORS_HEADERS;
}

void router_set_cors(router_t *r, int on) {
    r->cors = on;
}
