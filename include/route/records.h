/* records.h: the accounting of one /v1 exchange, done in C whatever the hooks do: the
 * `records` row built from the request's C result, and the upstream counters. */
#ifndef ROUTE_RECORDS_H
#define ROUTE_RECORDS_H

#include "route/hooks.h"
#include "route/store.h"

/* The row for an exchange that passed authorize: ip, body, user agent from the request;
 * model = the request body's model, else the response's, else the path; status, upstream,
 * extracted content and usage, durations and error from res. Without with_bodies (config
 * records_bodies=0) the body and the response text stay empty: the rest of the row is the
 * same. NULL when out of memory. */
store_record_t *records_build(const route_req_t *req, const route_res_t *res, int with_bodies);

/* The counter rules: each attempt marked failed (proxy.c leaves client aborts, client-caused
 * 4xx and sk "asis" 401/403 unmarked) gives its upstream failed_count+1; an exchange whose
 * last attempt served a 2xx or 3xx to a client that stayed gives success_count+1 and
 * last_call_success_time. s may be NULL (no database: nothing to count). */
void records_count(store_t *s, const route_res_t *res);

#endif
