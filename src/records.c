/* records.c: the accounting of one /v1 exchange.
 *
 * Owns: building the `records` row from what C knows of the exchange (request, attempts,
 * extraction) and the upstream counter rules (success, failure, what counts as neither).
 * Must not: run Lua or decide what the client gets (proxy.c), or talk to SQLite: counter bumps
 * go to the store's queue (store_loop_upstream_result); the row goes to proxy.c, which queues
 * it (store_loop_record) once on_response had its say. */
#include "route/records.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"

/* The row's strings, laid out after the record in its one allocation. */
typedef struct {
    const char *s;
    size_t n;
    size_t field; /* offsetof the store_record_t field */
} piece_t;

store_record_t *records_build(const route_req_t *req, const route_res_t *res, int with_bodies) {
    const http_request_t *hr = req->http;
    size_t body_len = 0;
    const char *body = with_bodies ? http_request_body(hr, &body_len) : NULL;
    size_t content_len = with_bodies && res->content ? res->content_len : 0;
    const char *ip = http_request_client_ip(hr);
    const char *model = req->model ? req->model : res->model ? res->model : http_request_path(hr);
    const route_header_t *ua = http_request_header(hr, "user-agent");
    piece_t pieces[] = {
        {ip, ip ? strlen(ip) : 0, offsetof(store_record_t, ip)},
        {body, body_len, offsetof(store_record_t, body)},
        {res->content, content_len, offsetof(store_record_t, response)},
        {model, model ? strlen(model) : 0, offsetof(store_record_t, model)},
        {res->upstream_endpoint, res->upstream_endpoint ? strlen(res->upstream_endpoint) : 0,
         offsetof(store_record_t, upstream_endpoint)},
        {ua ? ua->value : NULL, ua && ua->value ? ua->value_len : 0,
         offsetof(store_record_t, user_agent)},
        {res->error, res->error ? strlen(res->error) : 0, offsetof(store_record_t, error)},
    };
    enum { N_PIECES = sizeof(pieces) / sizeof(pieces[0]) };
    size_t total = 0;
    for (size_t i = 0; i < N_PIECES; i++)
        if (pieces[i].n) total += pieces[i].n + 1;
    store_record_t *r = store_record_new_inline(req->id, util_now_wall_ns(), total);
    if (!r) return NULL;
    /* Empty strings stay NULL (the store reads NULL as ""), so no inline string is empty. */
    char *o = store_record_inline(r);
    for (size_t i = 0; i < N_PIECES; i++) {
        if (!pieces[i].n) continue;
        char **field = (char **)((char *)r + pieces[i].field);
        memcpy(o, pieces[i].s, pieces[i].n);
        o[pieces[i].n] = '\0';
        *field = o;
        o += pieces[i].n + 1;
    }
    r->body_len = r->body ? body_len : 0;
    r->response_len = r->response ? content_len : 0;
    r->status = res->status;
    r->upstream_id = res->upstream_id;
    r->usage_missing = !res->has_usage;
    if (res->has_usage) {
        r->prompt_tokens = res->prompt_tokens;
        r->completion_tokens = res->completion_tokens;
        r->total_tokens = res->total_tokens;
        if (res->has_cached) r->cached_tokens = res->cached_tokens;
        if (res->has_reasoning) r->reasoning_tokens = res->reasoning_tokens;
    }
    r->elapsed_ns = res->elapsed_ns;
    r->response_time_ns = res->ttfb_ns;
    return r;
}

void records_count(store_t *s, const route_res_t *res) {
    if (!s) return;
    for (size_t i = 0; i < res->n_attempts; i++)
        if (res->attempts[i].failed && res->attempts[i].upstream_id > 0)
            store_loop_upstream_result(s, res->attempts[i].upstream_id, 0);
    int last_failed = res->n_attempts && res->attempts[res->n_attempts - 1].failed;
    /* 101: a WebSocket session the upstream accepted (it ended however the two sides chose). */
    int answered = (res->status >= 200 && res->status < 400) || res->status == 101;
    if (res->upstream_id > 0 && answered && !res->client_aborted && !last_failed)
        store_loop_upstream_result(s, res->upstream_id, 1);
}
