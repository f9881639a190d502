/* metrics.h: Prometheus counters and histograms of one event loop, served at /metrics.
 * Updated on the loop thread only (no locks). */
#ifndef ROUTE_METRICS_H
#define ROUTE_METRICS_H

#include <stdint.h>

#include "route/util.h"

typedef struct metrics metrics_t;

metrics_t *metrics_new(void);
void metrics_free(metrics_t *m);
/* One finished /v1 exchange. upstream_id 0: none was reached. */
void metrics_observe_request(metrics_t *m, int status, int64_t upstream_id, const char *endpoint,
                             int64_t elapsed_ns, int64_t ttfb_ns, int64_t prompt_tokens,
                             int64_t completion_tokens);
/* One failed upstream attempt (reason is a short word: connect, tls, timeout, status). */
void metrics_observe_upstream_failure(metrics_t *m, int64_t upstream_id, const char *endpoint,
                                      const char *reason);
void metrics_set_gauges(metrics_t *m, int64_t open_connections, int64_t active_requests);
/* Appends the Prometheus text exposition. */
int metrics_render(const metrics_t *m, buf_t *out);

#endif
