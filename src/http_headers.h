/* http_headers.h (private): header accumulation shared by both llhttp adapters, the server's
 * request parser (http1_server.c) and the client's response parser (http1_client.c). llhttp
 * hands names and values over in pieces; this collects them into route_header_t entries
 * (names lower-cased, values trimmed of trailing blanks) in the message's arena, with limits. */
#ifndef ROUTE_HTTP_HEADERS_H
#define ROUTE_HTTP_HEADERS_H

#include <stddef.h>

#include "route/http.h"

enum { HH_OK = 0, HH_TOO_LARGE = -1, HH_BAD_NAME = -2, HH_NOMEM = -3, HH_TOO_MANY = -4 };

typedef struct http_headers {
    buf_t name, value; /* the header being received */
    route_header_t *items;
    size_t n, cap;
    size_t bytes;       /* counted toward max_bytes */
    size_t max_bytes;   /* the whole block (names + 4 per line + values + whatever is counted) */
    size_t max_headers; /* 0: no limit */
    int strict_names;   /* reject names that are not RFC 9110 tokens */
} http_headers_t;

void http_headers_init(http_headers_t *h, size_t max_bytes, size_t max_headers, int strict);
/* Starts a new message (the arena of the previous one is not touched). */
void http_headers_reset(http_headers_t *h);
/* Counts n more bytes of the head (the request target, say) toward max_bytes. */
int http_headers_count(http_headers_t *h, size_t n);
int http_headers_on_field(http_headers_t *h, const char *at, size_t len);
int http_headers_on_value(http_headers_t *h, const char *at, size_t len);
/* One header is complete: it is copied into arena. HH_* result. */
int http_headers_on_complete(http_headers_t *h, arena_t *arena);
/* First header with that lower-case name among items[0..n), or NULL. */
const route_header_t *http_headers_find(const route_header_t *items, size_t n, const char *name);
void http_headers_free(http_headers_t *h);

#endif
