/* router.c: path registrations and the shared response policy.
 *
 * Owns: the table of path -> handler (longest match first), answering OPTIONS preflights,
 * the CORS header lines every response carries (a preflight's Access-Control-Allow-Headers
 * echoes the names it asked for, each checked to be a token, the list bounded), and the 404
 * for unknown paths.
 * Must not: parse HTTP or touch connections (http1_server.c does), or know any handler's
 * module (they are registered by main.c). */
#include "route/router.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ROUTES_MAX 32
/* Bounds on what a preflight may ask for: browsers send a handful of names (the OpenAI SDKs
 * about a dozen x-stainless-* ones); a list past these gets the default answer. */
#define PREFLIGHT_NAMES_MAX 64
#define PREFLIGHT_BYTES_MAX 2048

#define CORS_COMMON                                                                                \
    "Access-Control-Allow-Origin: *\r\n"                                                           \
    "Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE, PATCH\r\n"                     \
    "Access-Control-Expose-Headers: x-request-id, openai-processing-ms, openai-version, "          \
    "openai-organization, retry-after, x-ratelimit-limit-requests, x-ratelimit-limit-tokens, "     \
    "x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, "   \
    "x-ratelimit-reset-tokens\r\n"                                                                 \
    "Access-Control-Max-Age: 600\r\n"
#define ALLOW_HEADERS_DEFAULT "Origin, Authorization, Content-Type"

static const char CORS_HEADERS[] =
    CORS_COMMON "Access-Control-Allow-Headers: " ALLOW_HEADERS_DEFAULT "\r\n";

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

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int is_default_name(const char *name, size_t n) {
    static const char *const names[] = {"origin", "authorization", "content-type"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], name, n) == 0) return 1;
    return 0;
}

/* The Allow-Headers line for a preflight: the defaults, then every name it asked for that is
 * not one of them. NULL (use the default line) when the list is empty, too long, or holds
 * anything that is not a token: echoing it would let a client write header syntax. */
static char *preflight_allow_line(http_request_t *req) {
    const route_header_t *h = http_request_header(req, "access-control-request-headers");
    if (!h || h->value_len == 0 || h->value_len > PREFLIGHT_BYTES_MAX) return NULL;
    buf_t line = {0};
    buf_appends(&line, CORS_COMMON "Access-Control-Allow-Headers: " ALLOW_HEADERS_DEFAULT);
    const char *p = h->value, *end = h->value + h->value_len;
    size_t names = 0;
    int ok = 1;
    while (ok && p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        size_t n = (size_t)(p - name);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p != ',') ok = 0; /* a byte that is neither token, space nor comma */
        if (!n) continue;
        if (++names > PREFLIGHT_NAMES_MAX) ok = 0;
        if (ok && !is_default_name(name, n)) {
            buf_append(&line, ", ", 2);
            buf_append(&line, name, n);
        }
    }
    buf_appends(&line, "\r\n");
    char *out =
        ok && line.data ? arena_strndup(http_request_arena(req), line.data, line.len) : NULL;
    buf_free(&line);
    return out;
}

const char *router_response_headers(const router_t *r, http_request_t *req, size_t *len) {
    if (!r || !r->cors) {
        *len = 0;
        return "";
    }
    /* A request refused before its method was parsed (a 431, say) has none. */
    const char *method = req ? http_request_method(req) : NULL;
    if (method && strcmp(method, "OPTIONS") == 0) {
        char *line = preflight_allow_line(req);
        if (line) {
            *len = strlen(line);
            return line;
        }
    }
    *len = sizeof(CORS_HEADERS) - 1;
    return CORS_HEADERS;
}

void router_set_cors(router_t *r, int on) {
    r->cors = on;
}
