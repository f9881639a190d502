/* router.h: which handler answers which path, and the policy every response shares (CORS
 * headers, OPTIONS preflights, 404 for unknown paths). main.c registers the handlers; the
 * HTTP core calls router_dispatch for each complete request and never names a handler. */
#ifndef ROUTE_ROUTER_H
#define ROUTE_ROUTER_H

#include <stddef.h>

#include "route/http.h"

typedef struct router router_t;
typedef void (*route_handler_fn)(http_request_t *req);

enum {
    ROUTER_PREFIX = 0, /* the path itself or anything under it ("/v1", "/v1/models") */
    ROUTER_EXACT = 1,  /* only the path itself */
};

router_t *router_new(void);
void router_free(router_t *r);
/* Registers fn for path (no trailing '/'). The longest matching registration wins. 0, or -1
 * when out of memory or the table is full. */
int router_add(router_t *r, const char *path, int match, route_handler_fn fn);
/* The handler for a path, or NULL. */
route_handler_fn router_find(const router_t *r, const char *path);
/* Answers req: OPTIONS with an empty 200, a registered handler, or a 404 JSON error. */
void router_dispatch(const router_t *r, http_request_t *req);
/* Header lines added to every response to req ("Name: value\r\n"...; CORS by default; for a
 * preflight, Access-Control-Allow-Headers also names what it asked for). req may be NULL (an
 * answer to no parsed request). The text lives in static memory or req's arena. */
const char *router_response_headers(const router_t *r, http_request_t *req, size_t *len);
/* Turns the CORS headers (and the OPTIONS answer) off or on. */
void router_set_cors(router_t *r, int on);

#endif
