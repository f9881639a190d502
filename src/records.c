/* records.c: the accounting of one /v1 exchange.
 *
 * Owns: building the `records` row from what C knows of the exchange (request, attempts,
 * extraction) and the upstream counter rules (success, failure, what counts as neither).
 * Must not: run Lua or decide what the client gets (proxy.c), or talk to SQLite: rows and
 * counter bumps go to the store's queue (store_loop_record, store_loop_upstream_result). */
#include "route/records.h"

#include <stdlib.h>
#include <string.h>

#include "route/util.h"

static char *dup_n(const char *s, size_t n) {
    if (!s) return NULL;
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static char *dup_s(const char *s) {
    return s ? dup_n(s, strlen(s)) : NULL;
}

store_record_t *records_build(const route_req_t *req, const route_res_t *res) {
    store_record_t *r = store_record_new_id(req->id, util_now_wall_ns());
    if (!r) return NULL;
    const http_request_t *hr = req->http;
    r->ip = dup_s(http_request_client_ip(hr));
    size_t body_len = 0;
    const char *body = http_request_body(hr, &body_len);
    if (body_len) {
        r->body = dup_n(body, body_len);
        r->body_len = r->body ? body_len : 0;
    }
    if (res->content) {
        r->response = dup_n(res->content, res->content_len);
        r->response_len = r->response ? res->content_len : 0;
    }
    r->model = dup_s(req->model ? req->model : res->model ? res->model : http_request_path(hr));
    r->status = res->status;
    r->upstream_id = res->upstream_id;
    r->upstream_endpoint = dup_s(res->upstream_endpoint);
    if (res->has_usage) {
        r->prompt_tokens = res->prompt_tokens;
        r->completion_tokens = res->completion_tokens;
        r->total_tokens = res->total_tokens;
    }
    r->elapsed_ns = res->elapsed_ns;
    r->response_time_ns = res->ttfb_ns;
    const route_header_t *ua = http_request_header(hr, "user-agent");
    if (ua && ua->value) r->user_agent = dup_n(ua->value, ua->value_len);
    r->error = dup_s(res->error);
    return r;
}

void records_count(store_t *s, const route_res_t *res) {
    if (!s) return;
    for (size_t i = 0; i < res->n_attempts; i++)
        if (res->attempts[i].failed && res->attempts[i].upstream_id > 0)
            store_loop_upstream_result(s, res->attempts[i].upstream_id, 0);
    int last_failed = res->n_attempts && res->attempts[res->n_attempts - 1].failed;
    if (res->upstream_id > 0 && res->status >= 200 && res->status < 400 && !res->client_aborted &&
        !last_failed)
        store_loop_upstream_result(s, res->upstream_id, 1);
}
