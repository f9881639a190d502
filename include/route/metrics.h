/* metrics.h: Prometheus counters, gauges and histograms of one event loop, served at /metrics
 * (text format 0.0.4): the operational families (namespace openai_route_) and the
 * OpenTelemetry GenAI ones (gen_ai_*). Updated on the loop thread only (no locks). */
#ifndef ROUTE_METRICS_H
#define ROUTE_METRICS_H

#include <stdint.h>

#include "route/hooks.h"
#include "route/util.h"

/* Label bounds: distinct upstream ids and distinct model names, each; what comes after them
 * is counted under "other". */
#define METRICS_MAX_UPSTREAMS 64
#define METRICS_MAX_MODELS    64

typedef struct metrics metrics_t;

metrics_t *metrics_new(void);
void metrics_free(metrics_t *m);
/* One finished /v1 exchange (what the client got, every attempt): requests, tokens, attempt
 * outcomes of the attempts that did not fail, connect times, the histograms. */
void metrics_observe_request(metrics_t *m, const route_req_t *req, const route_res_t *res);
/* One failed upstream attempt (outcome is a short word: status, timeout, connect, tls, dns). */
void metrics_observe_upstream_failure(metrics_t *m, int64_t upstream_id, const char *endpoint,
                                      const char *outcome);
/* A text/event-stream response started (metrics_observe_request ends it when res->sse). */
void metrics_stream_started(metrics_t *m);
/* A script reload (SIGHUP, file change, POST /admin/reload) succeeded (ok) or failed. */
void metrics_observe_reload(metrics_t *m, int ok);

/* Figures owned elsewhere, read when /metrics is scraped. */
typedef struct metrics_gauges {
    int64_t open_connections, active_requests;
    uint64_t records_queue_depth, records_dropped_total;
    uint64_t access_log_dropped_total;
} metrics_gauges_t;
void metrics_set_gauges(metrics_t *m, const metrics_gauges_t *g);
/* Appends the Prometheus text exposition. 0, or -1 when out of memory. */
int metrics_render(const metrics_t *m, buf_t *out);

#endif
