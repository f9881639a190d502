/* metrics.c: the Prometheus counters, histograms and gauges of one event loop, and their text
 * exposition (format 0.0.4).
 *
 * Owns: the series and their label sets, kept bounded (upstream labels are interned up to
 * MAX_UPSTREAMS, failure reasons up to MAX_REASONS; the rest fold into "other").
 * Must not: know about HTTP or the store, take locks (loop thread only), or put anything
 * secret in a label: an upstream is named by its endpoint with userinfo and query cut off,
 * never by its key. */
#include "route/metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define MAX_UPSTREAMS 64
#define MAX_REASONS   16
#define MAX_LABEL     256
/* Request series are (status, upstream) pairs; statuses are few, so this is generous. */
#define MAX_REQUEST_SERIES 1024
#define MAX_FAILURE_SERIES (MAX_UPSTREAMS * 4)

static const double BUCKETS[] = {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120};
#define N_BUCKETS (sizeof(BUCKETS) / sizeof(BUCKETS[0]))

typedef struct histogram {
    uint64_t buckets[N_BUCKETS + 1]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t count;
    int64_t sum_ns;
} histogram_t;

typedef struct upstream_label {
    char *label;
    int used_by_upstream; /* a request reached it: its token series exist */
    uint64_t prompt_tokens, completion_tokens;
} upstream_label_t;

typedef struct request_series {
    int status;
    int upstream; /* index into upstreams */
    uint64_t count;
} request_series_t;

typedef struct failure_series {
    int upstream;
    int reason; /* index into reasons */
    uint64_t count;
} failure_series_t;

struct metrics {
    upstream_label_t upstreams[MAX_UPSTREAMS + 1]; /* the extra slot is "other" */
    int n_upstreams;
    char *reasons[MAX_REASONS + 1];
    int n_reasons;
    request_series_t *requests;
    size_t n_requests, cap_requests;
    failure_series_t failures[MAX_FAILURE_SERIES];
    size_t n_failures;
    histogram_t duration, ttfb;
    int64_t open_connections, active_requests;
};

metrics_t *metrics_new(void) {
    return calloc(1, sizeof(metrics_t));
}

void metrics_free(metrics_t *m) {
    if (!m) return;
    for (int i = 0; i <= MAX_UPSTREAMS; i++)
        free(m->upstreams[i].label);
    for (int i = 0; i <= MAX_REASONS; i++)
        free(m->reasons[i]);
    free(m->requests);
    free(m);
}

/* scheme://host/path only: userinfo or a query (?key=...) could carry a credential. */
static size_t endpoint_label(const char *endpoint, char *out, size_t cap) {
    size_t n = 0;
    if (!endpoint) endpoint = "";
    const char *p = endpoint;
    const char *scheme_end = strstr(endpoint, "://");
    if (scheme_end) {
        const char *host = scheme_end + 3;
        const char *at = NULL;
        for (const char *q = host; *q && *q != '/' && *q != '?' && *q != '#'; q++)
            if (*q == '@') at = q;
        size_t prefix = (size_t)(host - endpoint);
        if (prefix >= cap) prefix = cap - 1;
        memcpy(out, endpoint, prefix);
        n = prefix;
        p = at ? at + 1 : host;
    }
    for (; *p && *p != '?' && *p != '#' && n + 1 < cap; p++)
        out[n++] = *p;
    out[n] = '\0';
    return n;
}

/* Index of the upstream label, interning it; MAX_UPSTREAMS ("other") once the table is full,
 * -1 only when out of memory. */
static int upstream_index(metrics_t *m, int64_t upstream_id, const char *endpoint) {
    char label[MAX_LABEL];
    endpoint_label(upstream_id ? endpoint : NULL, label, sizeof(label));
    for (int i = 0; i < m->n_upstreams; i++)
        if (strcmp(m->upstreams[i].label, label) == 0) return i;
    if (m->n_upstreams == MAX_UPSTREAMS) {
        upstream_label_t *other = &m->upstreams[MAX_UPSTREAMS];
        if (!other->label && !(other->label = strdup("other"))) return -1;
        return MAX_UPSTREAMS;
    }
    char *copy = strdup(label);
    if (!copy) return -1;
    m->upstreams[m->n_upstreams].label = copy;
    return m->n_upstreams++;
}

static int reason_index(metrics_t *m, const char *reason) {
    char word[33];
    size_t n = 0;
    for (const char *p = reason ? reason : ""; *p && n + 1 < sizeof(word); p++)
        word[n++] = *p;
    word[n] = '\0';
    for (int i = 0; i < m->n_reasons; i++)
        if (strcmp(m->reasons[i], word) == 0) return i;
    if (m->n_reasons == MAX_REASONS) {
        if (!m->reasons[MAX_REASONS] && !(m->reasons[MAX_REASONS] = strdup("other"))) return -1;
        return MAX_REASONS;
    }
    char *copy = strdup(word);
    if (!copy) return -1;
    m->reasons[m->n_reasons] = copy;
    return m->n_reasons++;
}

static void histogram_observe(histogram_t *h, int64_t ns) {
    if (ns < 0) return;
    double s = (double)ns / 1e9;
    size_t i = 0;
    while (i < N_BUCKETS && s > BUCKETS[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum_ns += ns;
}

void metrics_observe_request(metrics_t *m, int status, int64_t upstream_id, const char *endpoint,
                             int64_t elapsed_ns, int64_t ttfb_ns, int64_t prompt_tokens,
                             int64_t completion_tokens) {
    if (!m) return;
    histogram_observe(&m->duration, elapsed_ns);
    if (ttfb_ns > 0) histogram_observe(&m->ttfb, ttfb_ns);

    int u = upstream_index(m, upstream_id, endpoint);
    if (u < 0) return;
    if (status < 0 || status > 999) status = 0;
    if (upstream_id) {
        upstream_label_t *l = &m->upstreams[u];
        l->used_by_upstream = 1;
        if (prompt_tokens > 0) l->prompt_tokens += (uint64_t)prompt_tokens;
        if (completion_tokens > 0) l->completion_tokens += (uint64_t)completion_tokens;
    }
    for (size_t i = 0; i < m->n_requests; i++) {
        request_series_t *r = &m->requests[i];
        if (r->status == status && r->upstream == u) {
            r->count++;
            return;
        }
    }
    if (m->n_requests == MAX_REQUEST_SERIES) return;
    if (m->n_requests == m->cap_requests) {
        size_t cap = m->cap_requests ? m->cap_requests * 2 : 16;
        request_series_t *grown = realloc(m->requests, cap * sizeof(*grown));
        if (!grown) return;
        m->requests = grown;
        m->cap_requests = cap;
    }
    m->requests[m->n_requests++] = (request_series_t){status, u, 1};
}

void metrics_observe_upstream_failure(metrics_t *m, int64_t upstream_id, const char *endpoint,
                                      const char *reason) {
    if (!m) return;
    int u = upstream_index(m, upstream_id, endpoint);
    int r = reason_index(m, reason);
    if (u < 0 || r < 0) return;
    for (size_t i = 0; i < m->n_failures; i++) {
        if (m->failures[i].upstream == u && m->failures[i].reason == r) {
            m->failures[i].count++;
            return;
        }
    }
    if (m->n_failures == MAX_FAILURE_SERIES) return;
    m->failures[m->n_failures++] = (failure_series_t){u, r, 1};
}

void metrics_set_gauges(metrics_t *m, int64_t open_connections, int64_t active_requests) {
    if (!m) return;
    m->open_connections = open_connections;
    m->active_requests = active_requests;
}

/* ---------------------------------------------------------------- exposition */

/* Label values escape backslash, double quote and newline (exposition format 0.0.4). */
static int append_label_value(buf_t *b, const char *s) {
    int rc = buf_appends(b, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            rc |= buf_appends(b, "\\\\");
        else if (*p == '"')
            rc |= buf_appends(b, "\\\"");
        else if (*p == '\n')
            rc |= buf_appends(b, "\\n");
        else
            rc |= buf_append(b, p, 1);
    }
    return rc | buf_appends(b, "\"");
}

static int append_header(buf_t *b, const char *name, const char *type, const char *help) {
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int append_histogram(buf_t *b, const char *name, const char *help, const histogram_t *h) {
    int rc = append_header(b, name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cumulative += h->buckets[i];
        rc |= buf_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, BUCKETS[i], cumulative);
    }
    cumulative += h->buckets[N_BUCKETS];
    rc |= buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cumulative);
    rc |= buf_printf(b, "%s_sum %" PRId64 ".%09" PRId64 "\n", name, h->sum_ns / 1000000000,
                     h->sum_ns % 1000000000);
    return rc | buf_printf(b, "%s_count %" PRIu64 "\n", name, h->count);
}

static const char *upstream_label(const metrics_t *m, int u) {
    return m->upstreams[u].label;
}

int metrics_render(const metrics_t *m, buf_t *out) {
    if (!m) return 0;
    int rc = append_header(out, "route_requests_total", "counter",
                           "Finished /v1 requests by the status the client got and upstream.");
    for (size_t i = 0; i < m->n_requests; i++) {
        const request_series_t *r = &m->requests[i];
        rc |= buf_printf(out, "route_requests_total{status=\"%d\",upstream=", r->status);
        rc |= append_label_value(out, upstream_label(m, r->upstream));
        rc |= buf_printf(out, "} %" PRIu64 "\n", r->count);
    }

    rc |= append_histogram(out, "route_request_duration_seconds",
                           "Time from the request to the end of its response.", &m->duration);
    rc |= append_histogram(out, "route_time_to_first_byte_seconds",
                           "Time from the request to the first response byte from an upstream.",
                           &m->ttfb);

    rc |= append_header(out, "route_tokens_total", "counter",
                        "Tokens reported by upstreams, by type and upstream.");
    for (int u = 0; u <= MAX_UPSTREAMS; u++) {
        const upstream_label_t *l = &m->upstreams[u];
        if (!l->label || !l->used_by_upstream) continue;
        static const char *const types[] = {"prompt", "completion"};
        const uint64_t counts[] = {l->prompt_tokens, l->completion_tokens};
        for (int t = 0; t < 2; t++) {
            rc |= buf_printf(out, "route_tokens_total{type=\"%s\",upstream=", types[t]);
            rc |= append_label_value(out, l->label);
            rc |= buf_printf(out, "} %" PRIu64 "\n", counts[t]);
        }
    }

    rc |= append_header(out, "route_upstream_failures_total", "counter",
                        "Failed upstream attempts, by upstream and reason.");
    for (size_t i = 0; i < m->n_failures; i++) {
        const failure_series_t *f = &m->failures[i];
        rc |= buf_appends(out, "route_upstream_failures_total{upstream=");
        rc |= append_label_value(out, upstream_label(m, f->upstream));
        rc |= buf_appends(out, ",reason=");
        rc |= append_label_value(out, m->reasons[f->reason]);
        rc |= buf_printf(out, "} %" PRIu64 "\n", f->count);
    }

    rc |= append_header(out, "route_open_connections", "gauge", "Open client connections.");
    rc |= buf_printf(out, "route_open_connections %" PRId64 "\n", m->open_connections);
    rc |= append_header(out, "route_active_requests", "gauge", "Requests being handled now.");
    rc |= buf_printf(out, "route_active_requests %" PRId64 "\n", m->active_requests);
    return rc ? -1 : 0;
}
