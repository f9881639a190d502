/* metrics.c: the Prometheus counters, histograms and gauges of one event loop, and their text
 * exposition (format 0.0.4).
 *
 * Owns: the families and their label sets, kept bounded: upstream labels are upstream ids,
 * interned up to METRICS_MAX_UPSTREAMS; model labels up to METRICS_MAX_MODELS (only for
 * exchanges that reached an upstream, so a client refused by authorize cannot fill the table);
 * every family's series table has a ceiling too. What passes a bound is counted under "other"
 * (a full upstream or model table is logged too, rate-limited).
 * The GenAI families follow the OpenTelemetry semantic conventions in their Prometheus form.
 * Must not: know about HTTP or the store, take locks (loop thread only), or put anything
 * secret in a label (an upstream is its id, never its key or URL). */
#include "route/metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_LABEL_MAX 128
/* Series per labelled family; far above what the label bounds give in practice. */
#define MAX_SERIES 4096

/* ---------------------------------------------------------------- buckets */

/* The operational latency histograms. */
static const double LATENCY_BUCKETS[] = {.005, .01, .025, .05, .1, .25, .5,
                                         1,    2.5, 5,    10,  30, 60,  120};
/* The GenAI buckets are the explicit bucket boundaries the OpenTelemetry semantic conventions
 * give (open-telemetry/semantic-conventions, docs/gen-ai/gen-ai-metrics.md: "This metric
 * SHOULD be specified with ExplicitBucketBoundaries of [...]"), for gen_ai.client.token.usage,
 * gen_ai.server.request.duration, gen_ai.server.time_to_first_token and
 * gen_ai.server.time_per_output_token. */
static const double TOKEN_BUCKETS[] = {1,     4,     16,     64,      256,     1024,     4096,
                                       16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
static const double GENAI_DURATION_BUCKETS[] = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                                1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double TTFT_BUCKETS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                      0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
static const double TPOT_BUCKETS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                      0.3,  0.4,   0.5,  0.75,  1.0, 2.5};
#define NB(a) (sizeof(a) / sizeof(a[0]))

typedef struct bucket_set {
    const double *le;
    size_t n;
} bucket_set_t;

/* ---------------------------------------------------------------- series tables */

/* A family's series: a key (the label indices packed in 32 bits) -> a value of `words`
 * 64-bit words, dense in the order they first appeared (so /metrics lists them stably),
 * found through an open-addressing index. */
typedef struct series_table {
    size_t words;      /* per value: 1 for a counter; buckets + 1 (+Inf) + sum for a histogram */
    uint32_t *keys;    /* dense */
    uint64_t *values;  /* dense, words each */
    size_t n, cap;     /* dense */
    uint32_t *index;   /* slot -> dense index + 1, 0 empty */
    size_t index_cap;  /* power of two, > 2n */
    uint32_t overflow; /* the key counted once MAX_SERIES series exist */
} series_table_t;

static uint32_t hash32(uint32_t k) {
    k ^= k >> 16;
    k *= 0x7feb352dU;
    k ^= k >> 15;
    k *= 0x846ca68bU;
    return k ^ (k >> 16);
}

static int table_grow_index(series_table_t *t) {
    size_t cap = t->index_cap ? t->index_cap * 2 : 64;
    uint32_t *idx = calloc(cap, sizeof(*idx));
    if (!idx) return -1;
    for (size_t i = 0; i < t->n; i++) {
        size_t s = hash32(t->keys[i]) & (cap - 1);
        while (idx[s])
            s = (s + 1) & (cap - 1);
        idx[s] = (uint32_t)i + 1;
    }
    free(t->index);
    t->index = idx;
    t->index_cap = cap;
    return 0;
}

/* The value words of key, created zeroed; NULL only when out of memory. */
static uint64_t *table_get(series_table_t *t, uint32_t key) {
    for (int pass = 0; pass < 2; pass++) {
        if (t->index_cap) {
            size_t s = hash32(key) & (t->index_cap - 1);
            while (t->index[s]) {
                size_t i = t->index[s] - 1;
                if (t->keys[i] == key) return &t->values[i * t->words];
                s = (s + 1) & (t->index_cap - 1);
            }
        }
        if (t->n < MAX_SERIES || key == t->overflow) break;
        key = t->overflow;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        uint32_t *keys = realloc(t->keys, cap * sizeof(*keys));
        if (!keys) return NULL;
        t->keys = keys;
        uint64_t *values = realloc(t->values, cap * t->words * sizeof(*values));
        if (!values) return NULL;
        t->values = values;
        t->cap = cap;
    }
    if ((t->n + 1) * 2 > t->index_cap && table_grow_index(t) != 0) return NULL;
    size_t i = t->n++;
    t->keys[i] = key;
    uint64_t *v = &t->values[i * t->words];
    memset(v, 0, t->words * sizeof(*v));
    size_t s = hash32(key) & (t->index_cap - 1);
    while (t->index[s])
        s = (s + 1) & (t->index_cap - 1);
    t->index[s] = (uint32_t)i + 1;
    return v;
}

static void table_free(series_table_t *t) {
    free(t->keys);
    free(t->values);
    free(t->index);
}

/* A histogram value: per-bucket counts (not cumulative; the last is +Inf), then the sum as a
 * double's bits. */
static void histogram_observe(uint64_t *v, const bucket_set_t *b, double x) {
    if (!v || x < 0) return;
    size_t i = 0;
    while (i < b->n && x > b->le[i])
        i++;
    v[i]++;
    double sum;
    memcpy(&sum, &v[b->n + 1], sizeof(sum));
    sum += x;
    memcpy(&v[b->n + 1], &sum, sizeof(sum));
}

/* ---------------------------------------------------------------- labels */

/* Outcomes of upstream attempts. */
static const char *const OUTCOMES[] = {
    "success", "client_error", "aborted", "status",   "timeout",          "connect",
    "tls",     "dns",          "closed",  "protocol", "invalid_endpoint", "other"};
#define N_OUTCOMES    (sizeof(OUTCOMES) / sizeof(OUTCOMES[0]))
#define OUTCOME_OTHER (N_OUTCOMES - 1)

/* gen_ai.operation.name by request path; the last is "no GenAI operation". */
static const struct {
    const char *path, *name;
} OPERATIONS[] = {
    {"/v1/chat/completions", "chat"},
    {"/v1/completions", "text_completion"},
    {"/v1/embeddings", "embeddings"},
    {"/v1/responses", "chat"}, /* the Responses API is a chat generation too */
};
#define N_OPERATIONS (sizeof(OPERATIONS) / sizeof(OPERATIONS[0]))

/* error.type of gen_ai.server.request.duration: the status code (low cardinality: HTTP
 * statuses), "" for none (a success). */
#define ERROR_TYPES_MAX 15 /* 4 bits; the last is "_OTHER" */

typedef struct model_label {
    uint32_t hash;
    char *name;
} model_label_t;

enum {
    F_REQUESTS,
    F_ATTEMPTS,
    F_TOKENS,
    F_CONNECT,
    F_GENAI_TOKENS,
    F_GENAI_DURATION,
    F_GENAI_TTFT,
    F_GENAI_TPOT,
    N_TABLES
};

struct metrics {
    int64_t upstream_ids[METRICS_MAX_UPSTREAMS];
    size_t n_upstreams;
    model_label_t models[METRICS_MAX_MODELS];
    size_t n_models;
    int error_statuses[ERROR_TYPES_MAX];
    size_t n_error_statuses;

    series_table_t tables[N_TABLES];
    uint64_t *duration, *first_byte; /* unlabelled histograms */
    uint64_t reloads[2];             /* failure, success */
    int64_t active_streams;
    metrics_gauges_t gauges;
    /* A full label table: what it refuses counts under "other", and the operator hears why
     * (observations refused per kind: upstream, model). */
    uint64_t label_overflows[2];
    log_limiter_t overflow_log;
};

enum { OVERFLOW_UPSTREAM, OVERFLOW_MODEL };

static void label_overflow(metrics_t *m, int kind) {
    static const char *const what[] = {"upstream ids", "model names"};
    static const int bound[] = {METRICS_MAX_UPSTREAMS, METRICS_MAX_MODELS};
    m->label_overflows[kind]++;
    route_log_limited(&m->overflow_log, LOG_WARN,
                      "metrics: the label table of %d %s is full; others count as "
                      "\"other\" (%" PRIu64 " observation(s) so far)",
                      bound[kind], what[kind], m->label_overflows[kind]);
}

/* Label index encodings. Upstream: 0 none, 1..64 the interned ids, 65 other. Model: 0 none,
 * 1..64 interned, 65 other. */
#define U_NONE  0
#define U_OTHER (METRICS_MAX_UPSTREAMS + 1)
#define M_NONE  0
#define M_OTHER (METRICS_MAX_MODELS + 1)

static uint32_t upstream_index(metrics_t *m, int64_t id) {
    if (id <= 0) return U_NONE;
    for (size_t i = 0; i < m->n_upstreams; i++)
        if (m->upstream_ids[i] == id) return (uint32_t)i + 1;
    if (m->n_upstreams == METRICS_MAX_UPSTREAMS) {
        label_overflow(m, OVERFLOW_UPSTREAM);
        return U_OTHER;
    }
    m->upstream_ids[m->n_upstreams++] = id;
    return (uint32_t)m->n_upstreams;
}

/* A model name as a label: at most MODEL_LABEL_MAX bytes of valid UTF-8 (a byte that is not
 * becomes '?'; so do control characters but newline, which the exposition escapes, and tab),
 * so the exposition stays valid text. */
static size_t clean_label(const char *s, char *out, size_t cap) {
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p && n + 4 < cap) {
        size_t len = *p < 0x80             ? 1
                     : (*p & 0xe0) == 0xc0 ? 2
                     : (*p & 0xf0) == 0xe0 ? 3
                     : (*p & 0xf8) == 0xf0 ? 4
                                           : 0;
        int ok = len > 0 && (len > 1 || *p >= 0x20 || *p == '\n' || *p == '\t') && *p != 0x7f;
        for (size_t k = 1; ok && k < len; k++)
            ok = (p[k] & 0xc0) == 0x80;
        if (!ok) {
            out[n++] = '?';
            p++;
            continue;
        }
        memcpy(out + n, p, len);
        n += len;
        p += len;
    }
    out[n] = '\0';
    return n;
}

static uint32_t model_index(metrics_t *m, const char *model, int may_intern) {
    if (!model || !*model) return M_NONE;
    char label[MODEL_LABEL_MAX + 1];
    clean_label(model, label, sizeof(label));
    uint32_t h = 2166136261U; /* FNV-1a */
    for (const char *c = label; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619U;
    for (size_t i = 0; i < m->n_models; i++)
        if (m->models[i].hash == h && strcmp(m->models[i].name, label) == 0) return (uint32_t)i + 1;
    if (!may_intern) return M_NONE;
    if (m->n_models == METRICS_MAX_MODELS) {
        label_overflow(m, OVERFLOW_MODEL);
        return M_OTHER;
    }
    char *copy = strdup(label);
    if (!copy) return M_OTHER;
    m->models[m->n_models] = (model_label_t){h, copy};
    return (uint32_t)++m->n_models;
}

static uint32_t outcome_index(const char *outcome) {
    for (uint32_t i = 0; i < OUTCOME_OTHER; i++)
        if (outcome && strcmp(OUTCOMES[i], outcome) == 0) return i;
    return OUTCOME_OTHER;
}

/* 0: no error; 1..14 interned statuses; 15 "_OTHER". */
static uint32_t error_type_index(metrics_t *m, int status) {
    if (status >= 100 && status < 400) return 0;
    for (size_t i = 0; i < m->n_error_statuses; i++)
        if (m->error_statuses[i] == status) return (uint32_t)i + 1;
    if (m->n_error_statuses == ERROR_TYPES_MAX - 1) return ERROR_TYPES_MAX;
    m->error_statuses[m->n_error_statuses++] = status;
    return (uint32_t)m->n_error_statuses;
}

static int operation_index(const char *path) {
    for (size_t i = 0; path && i < N_OPERATIONS; i++)
        if (strcmp(path, OPERATIONS[i].path) == 0) return (int)i;
    return -1;
}

/* Keys: status 10 bits | upstream 7 | model 7 | small 8 (outcome, token kind, operation,
 * error type). */
#define KEY(status, u, model, small)                                                               \
    (((uint32_t)(status) << 22) | ((uint32_t)(u) << 15) | ((uint32_t)(model) << 8) |               \
     (uint32_t)(small))
#define KEY_STATUS(k) ((k) >> 22)
#define KEY_U(k)      (((k) >> 15) & 0x7f)
#define KEY_MODEL(k)  (((k) >> 8) & 0x7f)
#define KEY_SMALL(k)  ((k)&0xff)

static const bucket_set_t latency = {LATENCY_BUCKETS, NB(LATENCY_BUCKETS)};
static const bucket_set_t tokens = {TOKEN_BUCKETS, NB(TOKEN_BUCKETS)};
static const bucket_set_t genai_duration = {GENAI_DURATION_BUCKETS, NB(GENAI_DURATION_BUCKETS)};
static const bucket_set_t ttft = {TTFT_BUCKETS, NB(TTFT_BUCKETS)};
static const bucket_set_t tpot = {TPOT_BUCKETS, NB(TPOT_BUCKETS)};

static size_t histogram_words(const bucket_set_t *b) {
    return b->n + 2;
}

metrics_t *metrics_new(void) {
    metrics_t *m = calloc(1, sizeof(metrics_t));
    if (!m) return NULL;
    static const struct {
        int table;
        const bucket_set_t *buckets; /* NULL: a counter */
        uint32_t overflow;
    } specs[] = {
        {F_REQUESTS, NULL, KEY(0, U_OTHER, M_OTHER, 0)},
        {F_ATTEMPTS, NULL, KEY(0, U_OTHER, 0, OUTCOME_OTHER)},
        {F_TOKENS, NULL, KEY(0, U_OTHER, M_OTHER, 0)},
        {F_CONNECT, &latency, KEY(0, U_OTHER, 0, 0)},
        {F_GENAI_TOKENS, &tokens, KEY(0, 0, M_OTHER, 0)},
        {F_GENAI_DURATION, &genai_duration, KEY(0, 0, M_OTHER, 0)},
        {F_GENAI_TTFT, &ttft, KEY(0, 0, M_OTHER, 0)},
        {F_GENAI_TPOT, &tpot, KEY(0, 0, M_OTHER, 0)},
    };
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        series_table_t *t = &m->tables[specs[i].table];
        t->words = specs[i].buckets ? histogram_words(specs[i].buckets) : 1;
        t->overflow = specs[i].overflow;
    }
    m->tables[F_TOKENS].words = 2; /* prompt, completion */
    m->duration = calloc(histogram_words(&latency), sizeof(uint64_t));
    m->first_byte = calloc(histogram_words(&latency), sizeof(uint64_t));
    if (!m->duration || !m->first_byte) {
        metrics_free(m);
        return NULL;
    }
    return m;
}

void metrics_free(metrics_t *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_models; i++)
        free(m->models[i].name);
    for (int i = 0; i < N_TABLES; i++)
        table_free(&m->tables[i]);
    free(m->duration);
    free(m->first_byte);
    free(m);
}

/* ---------------------------------------------------------------- observing */

static void count(series_table_t *t, uint32_t key, size_t word, uint64_t n) {
    uint64_t *v = table_get(t, key);
    if (v) v[word] += n;
}

static void observe_genai(metrics_t *m, const route_req_t *req, const route_res_t *res,
                          uint32_t model) {
    int op = operation_index(http_request_path(req->http));
    if (op < 0 || !res->n_attempts) return;
    int ok = res->status >= 200 && res->status < 300 && !res->error;
    double elapsed = (double)res->elapsed_ns / 1e9;
    uint32_t err = error_type_index(m, res->status);
    histogram_observe(table_get(&m->tables[F_GENAI_DURATION], KEY(0, 0, model, op << 4 | err)),
                      &genai_duration, elapsed);
    if (res->has_usage) {
        if (res->prompt_tokens >= 0)
            histogram_observe(table_get(&m->tables[F_GENAI_TOKENS], KEY(0, 0, model, op << 1)),
                              &tokens, (double)res->prompt_tokens);
        if (res->completion_tokens >= 0 && op != 2) /* embeddings produce no output tokens */
            histogram_observe(table_get(&m->tables[F_GENAI_TOKENS], KEY(0, 0, model, op << 1 | 1)),
                              &tokens, (double)res->completion_tokens);
    }
    /* A first token is only seen apart from the whole answer in a stream: its first response
     * bytes arrive as generation starts. */
    if (!ok || !res->sse || res->ttfb_ns <= 0) return;
    double first = (double)res->ttfb_ns / 1e9;
    histogram_observe(table_get(&m->tables[F_GENAI_TTFT], KEY(0, 0, model, op)), &ttft, first);
    if (res->has_usage && res->completion_tokens > 1 && elapsed > first)
        histogram_observe(table_get(&m->tables[F_GENAI_TPOT], KEY(0, 0, model, op)), &tpot,
                          (elapsed - first) / (double)(res->completion_tokens - 1));
}

void metrics_observe_request(metrics_t *m, const route_req_t *req, const route_res_t *res) {
    if (!m) return;
    if (res->sse && m->active_streams > 0) m->active_streams--;
    histogram_observe(m->duration, &latency, (double)res->elapsed_ns / 1e9);
    if (res->ttfb_ns > 0) histogram_observe(m->first_byte, &latency, (double)res->ttfb_ns / 1e9);

    /* Only an exchange that passed authorize (it reached an upstream) may add a model name. */
    const char *model_name = req->model ? req->model : res->model;
    uint32_t model = model_index(m, model_name, res->n_attempts > 0);
    uint32_t u = upstream_index(m, res->upstream_id);
    int status = res->status >= 0 && res->status <= 999 ? res->status : 0;
    count(&m->tables[F_REQUESTS], KEY(status, u, model, 0), 0, 1);
    if (res->has_usage && res->upstream_id) {
        uint64_t *v = table_get(&m->tables[F_TOKENS], KEY(0, u, model, 0));
        if (v && res->prompt_tokens > 0) v[0] += (uint64_t)res->prompt_tokens;
        if (v && res->completion_tokens > 0) v[1] += (uint64_t)res->completion_tokens;
    }
    for (size_t i = 0; i < res->n_attempts; i++) {
        const route_attempt_t *a = &res->attempts[i];
        uint32_t au = upstream_index(m, a->upstream_id);
        if (a->connect_ns > 0)
            histogram_observe(table_get(&m->tables[F_CONNECT], KEY(0, au, 0, 0)), &latency,
                              (double)a->connect_ns / 1e9);
        if (a->failed) continue; /* counted when it failed, with its reason */
        const char *outcome = a->status <= 0     ? "aborted"
                              : a->status >= 400 ? "client_error"
                                                 : "success";
        count(&m->tables[F_ATTEMPTS], KEY(0, au, 0, outcome_index(outcome)), 0, 1);
    }
    observe_genai(m, req, res, model);
}

void metrics_observe_upstream_failure(metrics_t *m, int64_t upstream_id, const char *endpoint,
                                      const char *outcome) {
    (void)endpoint;
    if (!m) return;
    count(&m->tables[F_ATTEMPTS], KEY(0, upstream_index(m, upstream_id), 0, outcome_index(outcome)),
          0, 1);
}

void metrics_stream_started(metrics_t *m) {
    if (m) m->active_streams++;
}

void metrics_observe_reload(metrics_t *m, int ok) {
    if (m) m->reloads[ok ? 1 : 0]++;
}

void metrics_set_gauges(metrics_t *m, const metrics_gauges_t *g) {
    if (m) m->gauges = *g;
}

/* ---------------------------------------------------------------- exposition */

/* Label values escape backslash, double quote and newline (exposition format 0.0.4). */
static int append_label(buf_t *b, const char *sep, const char *name, const char *value) {
    int rc = buf_appends(b, sep);
    rc |= buf_appends(b, name);
    rc |= buf_append(b, "=\"", 2);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            rc |= buf_append(b, "\\\\", 2);
        else if (*p == '"')
            rc |= buf_append(b, "\\\"", 2);
        else if (*p == '\n')
            rc |= buf_append(b, "\\n", 2);
        else
            rc |= buf_append(b, p, 1);
    }
    return rc | buf_append(b, "\"", 1);
}

/* The shortest text that reads back as the same double (so le="0.1", le="67108864"). */
static int append_double(buf_t *b, double x) {
    char text[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(text, sizeof(text), "%.*g", prec, x);
        if (strtod(text, NULL) == x) break;
    }
    return buf_appends(b, text);
}

static int append_header(buf_t *b, const char *name, const char *type, const char *help) {
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *upstream_text(const metrics_t *m, uint32_t u, char *tmp, size_t cap) {
    if (u == U_NONE) return "none";
    if (u == U_OTHER) return "other";
    snprintf(tmp, cap, "%" PRId64, m->upstream_ids[u - 1]);
    return tmp;
}

static const char *model_text(const metrics_t *m, uint32_t model) {
    if (model == M_NONE) return "none";
    if (model == M_OTHER) return "other";
    return m->models[model - 1].name;
}

/* A series' labels, written into `labels` (without braces) by the family's describe; word: which
 * of a counter series' values (tokens_total holds prompt and completion). */
typedef int (*describe_fn)(const metrics_t *m, uint32_t key, size_t word, buf_t *labels);

static int append_histogram_series(buf_t *b, const char *name, const char *labels,
                                   const uint64_t *v, const bucket_set_t *bs) {
    const char *sep = *labels ? "," : "";
    uint64_t cumulative = 0;
    int rc = 0;
    for (size_t i = 0; i <= bs->n; i++) {
        cumulative += v[i];
        rc |= buf_printf(b, "%s_bucket{%s%sle=\"", name, labels, sep);
        rc |= i < bs->n ? append_double(b, bs->le[i]) : buf_appends(b, "+Inf");
        rc |= buf_printf(b, "\"} %" PRIu64 "\n", cumulative);
    }
    double sum;
    memcpy(&sum, &v[bs->n + 1], sizeof(sum));
    rc |= buf_printf(b, "%s_sum%s%s%s ", name, *labels ? "{" : "", labels, *labels ? "}" : "");
    rc |= append_double(b, sum);
    rc |= buf_printf(b, "\n%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "", labels,
                     *labels ? "}" : "", cumulative);
    return rc;
}

static int append_family(buf_t *b, const metrics_t *m, const series_table_t *t, const char *name,
                         const char *type, const char *help, const bucket_set_t *bs,
                         describe_fn describe) {
    int rc = append_header(b, name, type, help);
    buf_t labels = {0};
    size_t words = bs ? 1 : t->words;
    for (size_t i = 0; i < t->n && !rc; i++) {
        const uint64_t *v = &t->values[i * t->words];
        for (size_t w = 0; w < words && !rc; w++) {
            labels.len = 0;
            rc |= describe(m, t->keys[i], w, &labels);
            rc |= buf_append(&labels, "", 1); /* NUL */
            if (rc) break;
            if (bs)
                rc |= append_histogram_series(b, name, labels.data, v, bs);
            else
                rc |= buf_printf(b, "%s{%s} %" PRIu64 "\n", name, labels.data, v[w]);
        }
    }
    buf_free(&labels);
    return rc;
}

static int describe_request(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    char tmp[24], status[8];
    snprintf(status, sizeof(status), "%u", KEY_STATUS(k));
    int rc = append_label(l, "", "status", KEY_STATUS(k) ? status : "other");
    rc |= append_label(l, ",", "upstream", upstream_text(m, KEY_U(k), tmp, sizeof(tmp)));
    return rc | append_label(l, ",", "model", model_text(m, KEY_MODEL(k)));
}

static int describe_attempt(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    char tmp[24];
    int rc = append_label(l, "", "upstream", upstream_text(m, KEY_U(k), tmp, sizeof(tmp)));
    return rc | append_label(l, ",", "outcome", OUTCOMES[KEY_SMALL(k) % N_OUTCOMES]);
}

static int describe_upstream(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    char tmp[24];
    return append_label(l, "", "upstream", upstream_text(m, KEY_U(k), tmp, sizeof(tmp)));
}

static int describe_tokens(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    char tmp[24];
    int rc = append_label(l, "", "upstream", upstream_text(m, KEY_U(k), tmp, sizeof(tmp)));
    rc |= append_label(l, ",", "model", model_text(m, KEY_MODEL(k)));
    return rc | append_label(l, ",", "kind", w ? "completion" : "prompt");
}

static int describe_genai(const metrics_t *m, uint32_t op, uint32_t model, buf_t *l) {
    int rc = append_label(l, "", "gen_ai_operation_name", OPERATIONS[op % N_OPERATIONS].name);
    rc |= append_label(l, ",", "gen_ai_provider_name", "openai");
    return rc | append_label(l, ",", "gen_ai_request_model", model_text(m, model));
}

static int describe_genai_tokens(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    int rc = describe_genai(m, KEY_SMALL(k) >> 1, KEY_MODEL(k), l);
    return rc | append_label(l, ",", "gen_ai_token_type", KEY_SMALL(k) & 1 ? "output" : "input");
}

static int describe_genai_duration(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    int rc = describe_genai(m, KEY_SMALL(k) >> 4, KEY_MODEL(k), l);
    uint32_t err = KEY_SMALL(k) & 0xf;
    if (!err) return rc;
    char status[16];
    if (err == ERROR_TYPES_MAX)
        snprintf(status, sizeof(status), "_OTHER");
    else
        snprintf(status, sizeof(status), "%d", m->error_statuses[err - 1]);
    return rc | append_label(l, ",", "error_type", status);
}

static int describe_genai_op(const metrics_t *m, uint32_t k, size_t w, buf_t *l) {
    (void)w;
    return describe_genai(m, KEY_SMALL(k), KEY_MODEL(k), l);
}

static int append_scalar(buf_t *b, const char *name, const char *type, const char *help,
                         uint64_t value) {
    return append_header(b, name, type, help) | buf_printf(b, "%s %" PRIu64 "\n", name, value);
}

static uint64_t nonneg(int64_t v) {
    return v > 0 ? (uint64_t)v : 0;
}

int metrics_render(const metrics_t *m, buf_t *out) {
    if (!m) return 0;
    const series_table_t *t = m->tables;
    int rc = append_family(out, m, &t[F_REQUESTS], "openai_route_requests_total", "counter",
                           "Finished /v1 requests by the status the client got, the upstream "
                           "that answered (none: no upstream did) and the model.",
                           NULL, describe_request);
    rc |= append_family(out, m, &t[F_ATTEMPTS], "openai_route_upstream_attempts_total", "counter",
                        "Upstream attempts by upstream and outcome (success, client_error, "
                        "aborted, or the failure: status, timeout, connect, tls, dns, closed, "
                        "protocol).",
                        NULL, describe_attempt);
    rc |= append_header(out, "openai_route_request_duration_seconds", "histogram",
                        "Time from the request to the end of its response.");
    rc |= append_histogram_series(out, "openai_route_request_duration_seconds", "", m->duration,
                                  &latency);
    rc |= append_header(out, "openai_route_first_byte_seconds", "histogram",
                        "Time from the request to the response head from an upstream.");
    rc |= append_histogram_series(out, "openai_route_first_byte_seconds", "", m->first_byte,
                                  &latency);
    rc |= append_family(out, m, &t[F_CONNECT], "openai_route_upstream_connect_seconds", "histogram",
                        "Time to set up a new upstream connection (DNS, TCP and TLS); a "
                        "pooled connection that is reused is not counted.",
                        &latency, describe_upstream);
    rc |= append_family(out, m, &t[F_TOKENS], "openai_route_tokens_total", "counter",
                        "Tokens upstreams reported, by upstream, model and kind.", NULL,
                        describe_tokens);

    const metrics_gauges_t *g = &m->gauges;
    rc |= append_scalar(out, "openai_route_active_connections", "gauge", "Open client connections.",
                        nonneg(g->open_connections));
    rc |= append_scalar(out, "openai_route_active_requests", "gauge", "Requests being handled now.",
                        nonneg(g->active_requests));
    rc |=
        append_scalar(out, "openai_route_active_streams", "gauge",
                      "text/event-stream responses being relayed now.", nonneg(m->active_streams));
    rc |= append_scalar(out, "openai_route_records_queue_depth", "gauge",
                        "Records queued for the database writer.", g->records_queue_depth);
    rc |= append_scalar(out, "openai_route_records_dropped_total", "counter",
                        "Records dropped because the writer's queue was full.",
                        g->records_dropped_total);
    rc |= append_scalar(out, "openai_route_access_log_dropped_total", "counter",
                        "Access log lines dropped because standard error did not keep up.",
                        g->access_log_dropped_total);
    rc |= append_header(out, "openai_route_script_reloads_total", "counter",
                        "Script reloads (SIGHUP, file change, POST /admin/reload) by result.");
    rc |= buf_printf(out,
                     "openai_route_script_reloads_total{result=\"success\"} %" PRIu64 "\n"
                     "openai_route_script_reloads_total{result=\"failure\"} %" PRIu64 "\n",
                     m->reloads[1], m->reloads[0]);

    rc |= append_family(out, m, &t[F_GENAI_TOKENS], "gen_ai_client_token_usage", "histogram",
                        "Number of input and output tokens used (unit: {token}).", &tokens,
                        describe_genai_tokens);
    rc |= append_family(out, m, &t[F_GENAI_DURATION], "gen_ai_server_request_duration_seconds",
                        "histogram", "Generative AI server request duration, to the last byte.",
                        &genai_duration, describe_genai_duration);
    rc |= append_family(out, m, &t[F_GENAI_TTFT], "gen_ai_server_time_to_first_token_seconds",
                        "histogram",
                        "Time to generate the first token for successful streamed responses.",
                        &ttft, describe_genai_op);
    rc |= append_family(out, m, &t[F_GENAI_TPOT], "gen_ai_server_time_per_output_token_seconds",
                        "histogram",
                        "Time per output token after the first, for successful streamed "
                        "responses.",
                        &tpot, describe_genai_op);
    return rc ? -1 : 0;
}
