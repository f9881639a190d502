/* admin.c: the /admin API (login, upstream CRUD, request records, reload) and the /metrics
 * endpoint, with their Bearer-token check.
 *
 * Owns: admin routing, the JSON shapes the Go program's admin API emitted, the records query's
 * parameters (limit, offset and the filters, validated before any store call), and moving every
 * store call onto libuv's thread pool.
 * Must not: call a store_* function that touches SQLite on the loop thread (only the
 * store_loop_* cache), touch a request's arena from a work thread, or log a key or a token. */
#include "route/admin.h"

#include "admin_internal.h"

#include "route/auth.h"
#include "route/config.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "route/access_log.h"
#include "route/ctx.h"
#include "route/hooks.h"
#include "route/metrics.h"
#include "route/reload.h"
#include "route/server.h"
#include "route/store.h"

#define RECORDS_DEFAULT_LIMIT 100
#define RECORDS_MAX_LIMIT     1000
#define RECORDS_MODEL_MAX     256

static const char BAD_REQUEST[] = "invalid_request_error";
static const char SERVER_ERROR[] = "server_error";
/* The type proxy.c gives a /v1 403, so clients see one shape for a refused token. */
static const char AUTH_ERROR[] = "authorization_error";

/* ---------------------------------------------------------------- responses */

static void respond_message(http_request_t *req, const char *message) {
    buf_t b = {0};
    int rc = buf_appends(&b, "{\"message\":");
    rc |= buf_append_json_string(&b, message, strlen(message));
    rc |= buf_appends(&b, "}\n");
    if (rc == 0)
        http_respond_json(req, 200, b.data, b.len);
    else
        http_respond_error(req, 500, SERVER_ERROR, "out of memory");
    buf_free(&b);
}

/* RFC 9110 wants Allow on a 405, which http_respond_error cannot add. */
static void respond_method_not_allowed(http_request_t *req, const char *allow) {
    buf_t head = {0}, body = {0};
    int rc =
        buf_printf(&head, "Allow: %s\r\nContent-Type: application/json; charset=utf-8\r\n", allow);
    rc |= buf_appends(&body, "{\"error\":{\"message\":\"method not allowed\",\"type\":");
    rc |= buf_append_json_string(&body, BAD_REQUEST, strlen(BAD_REQUEST));
    rc |= buf_appends(&body, "}}\n");
    if (rc != 0) {
        http_respond_error(req, 500, SERVER_ERROR, "out of memory");
    } else {
        if (http_response_start(req, 405, head.data, head.len, (int64_t)body.len) == 0)
            http_response_write(req, body.data, body.len, NULL);
        http_response_end(req);
    }
    buf_free(&head);
    buf_free(&body);
}

/* ---------------------------------------------------------------- authorization */

/* The one Bearer rule (auth.c) against the typed config's token list. Answers 403 itself when
 * the header does not pass. */
static int admin_authorized(http_request_t *req) {
    const route_header_t *h = http_request_header(req, "authorization");
    route_ctx_t *ctx = http_request_ctx(req);
    const route_config_t *cfg = config_current(ctx);
    int verdict = auth_check_bearer(cfg->tokens, h ? h->value : NULL, h ? h->value_len : 0);
    if (verdict == AUTH_OK) return 1;
    http_respond_error(req, 403, AUTH_ERROR, auth_refusal_message(verdict));
    return 0;
}

/* ---------------------------------------------------------------- store work */

typedef enum {
    JOB_LIST_UPSTREAMS,
    JOB_ADD_UPSTREAM,
    JOB_UPDATE_UPSTREAM,
    JOB_DELETE_UPSTREAM,
    JOB_LIST_RECORDS,
} job_kind_t;

/* One admin call's trip through the thread pool. The work side reads req->body (nobody
 * writes it while the request is alive) and fills the result; only the loop side touches
 * the connection. */
typedef struct admin_job {
    uv_work_t work;
    http_request_t *req;
    store_t *store;
    job_kind_t kind;
    int64_t id;
    int limit, offset;
    store_record_filter_t filter; /* its model points at model */
    char model[RECORDS_MODEL_MAX + 1];

    int status; /* 200: `out` is the body; else error_msg */
    char error_msg[256];
    buf_t out;
    int64_t result_id;     /* the upstream a change touched, for the log line */
    const char *done_verb; /* "added", ...: a change to log once it succeeded */
    /* Read after a change succeeded, installed by job_done before it answers: the request
     * after the response sees the change (the poller would take up to 100 ms). */
    store_snapshot_t *snap;
} admin_job_t;

static void job_fail(admin_job_t *job, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_fail(admin_job_t *job, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    job->status = status;
    vsnprintf(job->error_msg, sizeof(job->error_msg), fmt, ap);
    va_end(ap);
}

/* rc: what building job->out returned. */
static void job_built(admin_job_t *job, int rc) {
    if (rc != 0) job_fail(job, 500, "out of memory");
}

static int json_str(buf_t *b, const char *s) {
    return buf_append_json_string(b, s ? s : "", s ? strlen(s) : 0);
}

static int json_time(buf_t *b, int64_t wall_ns) {
    char t[64];
    size_t n = util_format_json_time(t, sizeof(t), wall_ns);
    return buf_append_json_string(b, t, n);
}

static void job_list_upstreams(admin_job_t *job) {
    store_upstream_list_t list = {0};
    if (store_list_upstreams(job->store, &list) != STORE_OK) {
        job_fail(job, 500, "cannot read upstreams");
        return;
    }
    buf_t *b = &job->out;
    int rc = buf_appends(b, "[");
    for (size_t i = 0; i < list.n; i++) {
        const store_upstream_t *u = &list.items[i];
        rc |= buf_printf(b, "%s{\"ID\":%" PRId64 ",\"CreatedAt\":", i ? "," : "", u->id);
        rc |= json_time(b, u->created_at);
        rc |= buf_appends(b, ",\"UpdatedAt\":");
        rc |= json_time(b, u->updated_at);
        rc |= buf_appends(b, ",\"DeletedAt\":null,\"SK\":");
        rc |= json_str(b, u->sk);
        rc |= buf_appends(b, ",\"Endpoint\":");
        rc |= json_str(b, u->endpoint);
        rc |= buf_printf(
            b, ",\"SuccessCount\":%" PRId64 ",\"FailedCount\":%" PRId64 ",\"LastCallSuccessTime\":",
            u->success_count, u->failed_count);
        rc |=
            u->has_last_success ? json_time(b, u->last_call_success_time) : buf_appends(b, "null");
        rc |= buf_appends(b, "}");
    }
    rc |= buf_appends(b, "]\n");
    store_upstream_list_free(&list);
    job_built(job, rc);
}

static void job_list_records(admin_job_t *job) {
    store_record_t **records = NULL;
    size_t n = 0;
    if (store_query_records(job->store, &job->filter, job->limit, job->offset, &records, &n) !=
        STORE_OK) {
        job_fail(job, 500, "cannot read records");
        return;
    }
    buf_t *b = &job->out;
    int rc = buf_appends(b, "[");
    for (size_t i = 0; i < n; i++) {
        const store_record_t *r = records[i];
        rc |= buf_appends(b, i ? ",{\"ID\":" : "{\"ID\":");
        rc |= json_str(b, r->id);
        rc |= buf_appends(b, ",\"CreatedAt\":");
        rc |= json_time(b, r->created_at);
        rc |= buf_appends(b, ",\"IP\":");
        rc |= json_str(b, r->ip);
        rc |= buf_appends(b, ",\"Body\":");
        rc |= buf_append_json_string(b, r->body ? r->body : "", r->body ? r->body_len : 0);
        rc |= buf_appends(b, ",\"Response\":");
        rc |= buf_append_json_string(b, r->response ? r->response : "",
                                     r->response ? r->response_len : 0);
        rc |= buf_printf(b, ",\"ElapsedTime\":%" PRId64 ",\"Model\":", r->elapsed_ns);
        rc |= json_str(b, r->model);
        rc |= buf_printf(b, ",\"Status\":%d,\"UpstreamID\":%" PRId64 ",\"UpstreamEndpoint\":",
                         r->status, r->upstream_id);
        rc |= json_str(b, r->upstream_endpoint);
        rc |= buf_printf(b,
                         ",\"PromptTokens\":%" PRId64 ",\"CompletionTokens\":%" PRId64
                         ",\"TotalTokens\":%" PRId64 ",\"ResponseTime\":%" PRId64 ",\"UserAgent\":",
                         r->prompt_tokens, r->completion_tokens, r->total_tokens,
                         r->response_time_ns);
        rc |= json_str(b, r->user_agent);
        rc |= buf_appends(b, ",\"Error\":");
        rc |= json_str(b, r->error);
        /* Added columns: null when the API reported no such count. */
        rc |= r->cached_tokens >= 0 ? buf_printf(b, ",\"CachedTokens\":%" PRId64, r->cached_tokens)
                                    : buf_appends(b, ",\"CachedTokens\":null");
        rc |= r->reasoning_tokens >= 0
                  ? buf_printf(b, ",\"ReasoningTokens\":%" PRId64, r->reasoning_tokens)
                  : buf_appends(b, ",\"ReasoningTokens\":null");
        rc |= buf_appends(b, "}");
    }
    rc |= buf_appends(b, "]\n");
    for (size_t i = 0; i < n; i++)
        store_record_free(records[i]);
    free(records);
    job_built(job, rc);
}

/* Binds SK and Endpoint as Go's encoding/json did: keys match field names case-insensitively
 * and a later key wins; null leaves the field unset; another type is an error. Each result
 * points into obj. Returns 0, or -1 with the offending field in *bad. */
static int bind_upstream(json_t *obj, const char **sk, const char **endpoint, const char **bad) {
    const char *key;
    json_t *value;
    *sk = *endpoint = NULL;
    json_object_foreach(obj, key, value) {
        const char **field = NULL;
        if (strcasecmp(key, "SK") == 0)
            field = sk;
        else if (strcasecmp(key, "Endpoint") == 0)
            field = endpoint;
        if (!field || json_is_null(value)) continue;
        if (!json_is_string(value)) {
            *bad = field == sk ? "SK" : "Endpoint";
            return -1;
        }
        *field = json_string_value(value);
    }
    return 0;
}

int admin_parse_upstream_body(const char *body, size_t len, admin_upstream_body_t *out, char *err,
                              size_t err_cap) {
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, 0, &jerr);
    const char *bad = NULL;
    out->sk = out->endpoint = NULL;
    out->doc = NULL;
    if (!obj || !json_is_object(obj)) {
        if (obj)
            snprintf(err, err_cap, "invalid JSON: expected an object with SK and Endpoint");
        else
            snprintf(err, err_cap, "invalid JSON: %s", jerr.text);
        json_decref(obj);
        return 400;
    }
    if (bind_upstream(obj, &out->sk, &out->endpoint, &bad) != 0) {
        snprintf(err, err_cap, "invalid JSON: %s must be a string", bad);
        json_decref(obj);
        out->sk = out->endpoint = NULL;
        return 400;
    }
    out->doc = obj;
    return 0;
}

void admin_upstream_body_free(admin_upstream_body_t *b) {
    json_decref(b->doc);
    b->doc = NULL;
    b->sk = b->endpoint = NULL;
}

static void job_write_upstream(admin_job_t *job) {
    size_t body_len = 0;
    const char *body = http_request_body(job->req, &body_len);
    admin_upstream_body_t parsed;
    int status =
        admin_parse_upstream_body(body, body_len, &parsed, job->error_msg, sizeof(job->error_msg));
    if (status != 0) {
        job->status = status;
        return;
    }
    json_t *obj = parsed.doc;
    const char *sk = parsed.sk, *endpoint = parsed.endpoint;

    int rc;
    if (job->kind == JOB_ADD_UPSTREAM) {
        if (!sk || !*sk || !endpoint || !*endpoint) {
            job_fail(job, 400, "%s must not be empty", !sk || !*sk ? "SK" : "Endpoint");
            json_decref(obj);
            return;
        }
        rc = store_add_upstream(job->store, sk, endpoint, &job->result_id);
        job->done_verb = "added";
    } else {
        /* An empty string keeps the field, as gorm's Updates skipped zero values: an upstream
         * never ends up with an empty key or endpoint. */
        rc = store_update_upstream(job->store, job->id, sk && *sk ? sk : NULL,
                                   endpoint && *endpoint ? endpoint : NULL);
        job->result_id = job->id;
        job->done_verb = "updated";
    }
    json_decref(obj);

    if (rc == STORE_EXISTS)
        job_fail(job, 409, "upstream with this SK and Endpoint already exists");
    else if (rc == STORE_NOT_FOUND)
        job_fail(job, 404, "upstream not found");
    else if (rc != STORE_OK)
        job_fail(job, 500, "cannot write upstream");
    else if (job->kind == JOB_ADD_UPSTREAM)
        job_built(job, buf_printf(&job->out, "{\"message\":\"success\",\"ID\":%" PRId64 "}\n",
                                  job->result_id));
    else
        job_built(job, buf_appends(&job->out, "{\"message\":\"success\"}\n"));
}

static void job_delete_upstream(admin_job_t *job) {
    int rc = store_delete_upstream(job->store, job->id);
    job->result_id = job->id;
    job->done_verb = "deleted";
    if (rc == STORE_NOT_FOUND)
        job_fail(job, 404, "upstream not found");
    else if (rc != STORE_OK)
        job_fail(job, 500, "cannot delete upstream");
    else
        job_built(job, buf_appends(&job->out, "{\"message\":\"success\"}\n"));
}

/* A change that succeeded: the loop's view to install with the answer. */
static void job_read_snapshot(admin_job_t *job) {
    if (job->status == 200 && job->done_verb) job->snap = store_snapshot_read(job->store);
}

static void job_run(uv_work_t *w) {
    admin_job_t *job = w->data;
    job->status = 200;
    switch (job->kind) {
    case JOB_LIST_UPSTREAMS:
        job_list_upstreams(job);
        break;
    case JOB_ADD_UPSTREAM:
    case JOB_UPDATE_UPSTREAM:
        job_write_upstream(job);
        job_read_snapshot(job);
        break;
    case JOB_DELETE_UPSTREAM:
        job_delete_upstream(job);
        job_read_snapshot(job);
        break;
    case JOB_LIST_RECORDS:
        job_list_records(job);
        break;
    }
}

static void job_done(uv_work_t *w, int status) {
    admin_job_t *job = w->data;
    http_request_t *req = job->req;
    /* Even for a client that left: the change is made, the loop must see it. */
    store_loop_apply(job->store, job->snap);
    job->snap = NULL;
    if (http_request_client_connected(req)) {
        if (status != 0)
            http_respond_error(req, 503, SERVER_ERROR, "admin call cancelled");
        else if (job->status == 200)
            http_respond_json(req, 200, job->out.data, job->out.len);
        else
            http_respond_error(req, job->status, job->status >= 500 ? SERVER_ERROR : BAD_REQUEST,
                               job->error_msg);
    }
    if (status == 0 && job->status == 200 && job->done_verb)
        route_log(LOG_INFO, "admin: upstream %" PRId64 " %s", job->result_id, job->done_verb);
    buf_free(&job->out);
    free(job);
    http_request_release(req);
}

/* The request is retained until job_done, so a client that leaves meanwhile costs nothing
 * but the finished work. */
static void queue_job(http_request_t *req, admin_job_t *job) {
    job->req = req;
    job->store = http_request_ctx(req)->store;
    job->work.data = job;
    http_request_retain(req);
    int rc = uv_queue_work(http_request_ctx(req)->loop, &job->work, job_run, job_done);
    if (rc != 0) {
        route_log(LOG_ERROR, "admin: cannot queue work: %s", uv_strerror(rc));
        http_respond_error(req, 503, SERVER_ERROR, "admin call cannot run now");
        free(job);
        http_request_release(req);
    }
}

static admin_job_t *new_job(http_request_t *req, job_kind_t kind) {
    admin_job_t *job = calloc(1, sizeof(*job));
    if (!job)
        http_respond_error(req, 500, SERVER_ERROR, "out of memory");
    else
        job->kind = kind;
    return job;
}

/* ---------------------------------------------------------------- parameters */

/* Decimal digits only, no sign or spaces, within [min, max]. */
static int parse_int(const char *s, size_t n, int64_t min, int64_t max, int64_t *out) {
    if (n == 0 || n > 19) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v < min || v > max) return -1;
    *out = v;
    return 0;
}

/* One query parameter as a number in [0, max]; an absent or empty value leaves *out alone. */
static int query_number(const char *v, size_t vlen, int64_t max, int *out) {
    int64_t x;
    if (vlen == 0) return 0;
    if (parse_int(v, vlen, 0, INT64_MAX, &x) != 0) return -1;
    *out = (int)(x > max ? max : x);
    return 0;
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decodes v[0..n) into out (NUL-terminated, at most cap - 1 bytes); '+' is a space
 * when plus_is_space (form encoding, as Go's url.ParseQuery reads it). -1: a bad escape, a
 * NUL, or too long. */
static int query_decode(const char *v, size_t n, int plus_is_space, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)v[i];
        if (c == '%') {
            int hi = i + 2 < n ? hex_digit(v[i + 1]) : -1, lo = hi >= 0 ? hex_digit(v[i + 2]) : -1;
            if (lo < 0) return -1;
            c = hi * 16 + lo;
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == 0 || o + 1 >= cap) return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* A time as -since takes it (RFC 3339, the database's text, YYYY-MM-DD as midnight UTC). A '+'
 * is the offset's sign unless the value only parses with it as a form-encoded space. */
static int query_time(const char *v, size_t n, int64_t *ns) {
    char text[64];
    if (query_decode(v, n, 0, text, sizeof text) != 0) return -1;
    if (util_parse_db_time(text, ns) == 0) return 0;
    if (query_decode(v, n, 1, text, sizeof text) != 0) return -1;
    return util_parse_db_time(text, ns);
}

typedef struct records_query {
    int limit, offset;
    store_record_filter_t filter; /* its model points at model */
    char model[RECORDS_MODEL_MAX + 1];
} records_query_t;

/* One parameter of the records query into q; -1 when its value is bad. An empty value is as
 * good as an absent one; unknown parameters are ignored, as they were. */
static int records_param(records_query_t *q, const char *k, size_t klen, const char *v,
                         size_t vlen) {
    store_record_filter_t *f = &q->filter;
    int64_t x;
#define KEY(name) (klen == sizeof(name) - 1 && memcmp(k, name, klen) == 0)
    if (vlen == 0) return 0;
    if (KEY("limit")) return query_number(v, vlen, RECORDS_MAX_LIMIT, &q->limit);
    if (KEY("offset")) return query_number(v, vlen, INT_MAX, &q->offset);
    if (KEY("model")) {
        if (query_decode(v, vlen, 1, q->model, sizeof q->model) != 0) return -1;
        f->model = q->model;
    } else if (KEY("status")) {
        if (parse_int(v, vlen, 0, 999, &x) != 0) return -1;
        f->has_status = 1;
        f->status = (int)x;
    } else if (KEY("upstream_id")) {
        if (parse_int(v, vlen, 0, INT64_MAX, &f->upstream_id) != 0) return -1;
        f->has_upstream_id = 1;
    } else if (KEY("since")) {
        if (query_time(v, vlen, &f->since_ns) != 0) return -1;
        f->has_since = 1;
    } else if (KEY("until")) {
        if (query_time(v, vlen, &f->until_ns) != 0) return -1;
        f->has_until = 1;
    }
#undef KEY
    return 0;
}

static const struct {
    const char *name, *want;
} records_params[] = {
    {"limit", "a whole number >= 0"},
    {"offset", "a whole number >= 0"},
    {"model", "a model name of at most 256 bytes, percent-encoded"},
    {"status", "an HTTP status, 0 to 999"},
    {"upstream_id", "an upstream id, a whole number >= 0"},
    {"since", "RFC 3339 (2024-05-01T12:00:00Z, offset as %2B08:00) or YYYY-MM-DD"},
    {"until", "RFC 3339 (2024-05-01T12:00:00Z, offset as %2B08:00) or YYYY-MM-DD"},
};

/* limit (capped at RECORDS_MAX_LIMIT), offset and the filters from the query. Returns 0, or
 * -1 with a message naming the offending parameter in bad. */
static int parse_records_query(const char *query, records_query_t *q, char *bad, size_t cap) {
    memset(q, 0, sizeof *q);
    q->limit = RECORDS_DEFAULT_LIMIT;
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t klen = eq ? (size_t)(eq - p) : n;
        const char *v = eq ? eq + 1 : p + n;
        size_t vlen = (size_t)(p + n - v);
        if (records_param(q, p, klen, v, vlen) != 0) {
            for (size_t i = 0; i < sizeof records_params / sizeof *records_params; i++)
                if (strlen(records_params[i].name) == klen &&
                    memcmp(records_params[i].name, p, klen) == 0)
                    snprintf(bad, cap, "invalid %s: want %s", records_params[i].name,
                             records_params[i].want);
            return -1;
        }
        p = amp ? amp + 1 : p + n;
    }
    return 0;
}

/* ---------------------------------------------------------------- routes */

static int method_is(const http_request_t *req, const char *name) {
    return strcmp(http_request_method(req), name) == 0;
}

static void route_upstreams(http_request_t *req) {
    job_kind_t kind;
    if (method_is(req, "GET"))
        kind = JOB_LIST_UPSTREAMS;
    else if (method_is(req, "POST"))
        kind = JOB_ADD_UPSTREAM;
    else {
        respond_method_not_allowed(req, "GET, POST");
        return;
    }
    admin_job_t *job = new_job(req, kind);
    if (job) queue_job(req, job);
}

static void route_upstream(http_request_t *req, const char *id_text, size_t id_len) {
    job_kind_t kind;
    if (method_is(req, "PUT"))
        kind = JOB_UPDATE_UPSTREAM;
    else if (method_is(req, "DELETE"))
        kind = JOB_DELETE_UPSTREAM;
    else {
        respond_method_not_allowed(req, "PUT, DELETE");
        return;
    }
    int64_t id;
    if (parse_int(id_text, id_len, 1, INT64_MAX, &id) != 0) {
        http_respond_error(req, 400, BAD_REQUEST, "invalid upstream id");
        return;
    }
    admin_job_t *job = new_job(req, kind);
    if (!job) return;
    job->id = id;
    queue_job(req, job);
}

static void route_records(http_request_t *req) {
    if (!method_is(req, "GET")) {
        respond_method_not_allowed(req, "GET");
        return;
    }
    records_query_t q;
    char bad[160];
    if (parse_records_query(http_request_query(req), &q, bad, sizeof bad) != 0) {
        http_respond_error(req, 400, BAD_REQUEST, bad);
        return;
    }
    if (q.limit == 0) {
        http_respond_json(req, 200, "[]\n", 3);
        return;
    }
    admin_job_t *job = new_job(req, JOB_LIST_RECORDS);
    if (!job) return;
    job->limit = q.limit;
    job->offset = q.offset;
    job->filter = q.filter;
    memcpy(job->model, q.model, sizeof job->model);
    if (q.filter.model) job->filter.model = job->model;
    queue_job(req, job);
}

static void on_reloaded(void *data, int ok, const char *err) {
    http_request_t *req = data;
    if (http_request_client_connected(req)) {
        if (ok)
            respond_message(req, "success");
        else
            http_respond_error(req, 400, "script_error", err ? err : "reload failed");
    }
    http_request_release(req);
}

static void route_reload(http_request_t *req) {
    if (!method_is(req, "POST")) {
        respond_method_not_allowed(req, "POST");
        return;
    }
    /* The folder is read off the loop, then loaded on it (the Lua state belongs to it); the
     * answer waits for that. Requests in flight keep the hooks they started with. */
    http_request_retain(req);
    reloader_request(http_request_ctx(req)->reloader, "admin", on_reloaded, req);
}

static void route_scripts(http_request_t *req) {
    if (!method_is(req, "GET")) {
        respond_method_not_allowed(req, "GET");
        return;
    }
    buf_t out = {0};
    reloader_status_json(http_request_ctx(req)->reloader, &out);
    buf_appends(&out, "\n");
    if (out.data)
        http_respond_json(req, 200, out.data, out.len);
    else
        http_respond_error(req, 500, "server_error", "out of memory");
    buf_free(&out);
}

void admin_handle(http_request_t *req) {
    if (!admin_authorized(req)) return;
    const char *p = http_request_path(req) + strlen("/admin");
    size_t n = strlen(p);
    if (n > 1 && p[n - 1] == '/') n--; /* "/admin/upstreams/" is the collection */

#define IS(route) (n == sizeof(route) - 1 && memcmp(p, route, n) == 0)
    static const char upstream_prefix[] = "/upstreams/";
    const size_t uplen = sizeof(upstream_prefix) - 1;
    if (IS("/login")) {
        if (!method_is(req, "POST")) {
            respond_method_not_allowed(req, "POST");
            return;
        }
        respond_message(req, "success");
    } else if (IS("/upstreams")) {
        route_upstreams(req);
    } else if (n > uplen && memcmp(p, upstream_prefix, uplen) == 0 &&
               !memchr(p + uplen, '/', n - uplen)) { /* one segment, as gin's :id */
        route_upstream(req, p + uplen, n - uplen);
    } else if (IS("/request_records")) {
        route_records(req);
    } else if (IS("/reload")) {
        route_reload(req);
    } else if (IS("/scripts")) {
        route_scripts(req);
    } else {
        http_respond_error(req, 404, BAD_REQUEST, "not found");
    }
#undef IS
}

/* ---------------------------------------------------------------- /metrics */

void metrics_handle(http_request_t *req) {
    if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
        respond_method_not_allowed(req, "GET, HEAD");
        return;
    }
    route_ctx_t *ctx = http_request_ctx(req);
    if (!config_current(ctx)->metrics_public && !admin_authorized(req)) return;

    store_stats_t st = {0};
    if (ctx->store) store_stats(ctx->store, &st);
    metrics_gauges_t g = {
        .open_connections = (int64_t)server_open_connections(ctx),
        .active_requests = (int64_t)server_active_requests(ctx),
        .records_queue_depth = st.queue_depth,
        .records_dropped_total = st.dropped_total,
        .access_log_dropped_total = access_log_dropped(ctx->access_log),
    };
    metrics_set_gauges(ctx->metrics, &g);
    buf_t b = {0};
    if (metrics_render(ctx->metrics, &b) != 0) {
        buf_free(&b);
        {
            http_respond_error(req, 500, SERVER_ERROR, "out of memory");
            return;
        }
    }
    static const char ct[] = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n";
    if (http_response_start(req, 200, ct, sizeof(ct) - 1, (int64_t)b.len) == 0)
        http_response_write(req, b.data ? b.data : "", b.len, NULL);
    http_response_end(req);
    buf_free(&b);
}

/* ---------------------------------------------------------------- seams for the fuzz target */

int admin_parse_records_query(const char *query, int *limit, int *offset, char *bad, size_t cap) {
    records_query_t q;
    bad[0] = '\0';
    int rc = parse_records_query(query, &q, bad, cap);
    *limit = q.limit;
    *offset = q.offset;
    return rc;
}

int admin_parse_upstream_id(const char *text, size_t len, long long *id) {
    int64_t v;
    if (parse_int(text, len, 1, INT64_MAX, &v) != 0) return -1;
    *id = (long long)v;
    return 0;
}
