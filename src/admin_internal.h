/* admin_internal.h (private to admin.c and its tests): the parsers of the admin API's inputs,
 * named so tests/fuzz/fuzz_admin_json.c can reach them without a request or a store. */
#ifndef ROUTE_ADMIN_INTERNAL_H
#define ROUTE_ADMIN_INTERNAL_H

#include <stddef.h>

/* The fields of a POST or PUT /admin/upstreams body. sk and endpoint are NULL when not given
 * (or null); both point into doc, which admin_upstream_body_free releases. */
typedef struct admin_upstream_body {
    const char *sk, *endpoint;
    void *doc; /* the parsed JSON document */
} admin_upstream_body_t;

/* Parses body as Go's encoding/json bound it. 0, or 400 with the message in err. */
int admin_parse_upstream_body(const char *body, size_t len, admin_upstream_body_t *out, char *err,
                              size_t err_cap);
void admin_upstream_body_free(admin_upstream_body_t *b);

/* GET /admin/request_records's query (may be NULL): limit, offset and the filters. 0, or -1
 * with "invalid <parameter>: want ..." in bad. */
int admin_parse_records_query(const char *query, int *limit, int *offset, char *bad, size_t cap);
/* An upstream id of /admin/upstreams/:id: decimal digits only, at least 1. 0 or -1. */
int admin_parse_upstream_id(const char *text, size_t len, long long *id);

#endif
