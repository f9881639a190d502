/* access_log.h: one line per /v1 request on standard error (text or JSON Lines), formatted on
 * the loop thread and written by a thread of its own, so a slow terminal or pipe never holds
 * the loop. Config access_log=0 turns it off. */
#ifndef ROUTE_ACCESS_LOG_H
#define ROUTE_ACCESS_LOG_H

#include <stdint.h>

#include "route/hooks.h"

typedef struct access_log access_log_t;

enum access_log_format { ACCESS_LOG_TEXT, ACCESS_LOG_JSON };

/* Starts the writer thread on fd (2: standard error). NULL when it cannot start. */
access_log_t *access_log_new(int fd, enum access_log_format format);
/* Writes what is buffered, stops the thread, frees. */
void access_log_free(access_log_t *al);
/* One finished exchange (al may be NULL). Loop thread. */
void access_log_request(access_log_t *al, const route_req_t *req, const route_res_t *res);
/* A request answered by the server or a handler other than the proxy (admin, /metrics, 404):
 * the same line with what HTTP knows (no model, upstream, tokens or request id). */
void access_log_http(access_log_t *al, http_request_t *req, int status);
/* Lines dropped because the buffer was full (stderr did not keep up). Any thread. */
uint64_t access_log_dropped(access_log_t *al);

/* Formats one line (with its '\n') into out; for tests and benchmarks. */
void access_log_format_line(enum access_log_format format, const route_req_t *req,
                            const route_res_t *res, buf_t *out);

#endif
