/* proxy.c: one /v1 request's life.
 *
 * Owns: the order of events (authorize hook, pick_upstream hook, forward, failover, stream,
 * finish), the upstream request's path and headers, which failures fail over and count, the
 * response headers passed back, backpressure, a WebSocket handshake (its headers both ways,
 * the switch to a tunnel.c relay after the upstream's 101 and the session's record), what
 * on_response and the metrics see, and when
 * the exchange is accounted (records.c builds the row and counts, in proxy_finish).
 * Must not: parse HTTP or manage sockets (http1_server.c, http1_client.c, stream.c), touch Lua
 * (src/lua/) or SQLite (it only queues the finished row, store_loop_record), read config
 * strings (config_current gives the typed snapshot), or copy response bytes: they go to the
 * client in the buffer they came in. */
#include "route/proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route/access_log.h"
#include "route/body_edit.h"
#include "route/auth.h"
#include "route/config.h"
#include "route/extract.h"
#include "route/hooks.h"
#include "route/metrics.h"
#include "route/records.h"
#include "route/sse.h"
#include "route/store.h"
#include "route/tunnel.h"
#include "route/upstream.h"

typedef struct proxy_req {
    route_ctx_t *ctx;
    http_request_t *http;
    route_req_t rreq;
    route_candidate_t *cands;
    size_t n_cands, next;
    route_attempt_t *attempts;
    size_t n_attempts;
    const upstream_url_t *url;     /* of the current attempt */
    upstream_url_ref_t **url_refs; /* one per attempt, released at the end */
    const upstream_url_t **urls;   /* one per attempt (NULL: invalid), for the 502 message */
    upstream_req_t *up;
    extract_t *ex;
    int64_t ttfb_ns;
    int status, sent_head, finished, client_aborted, asis;
    const char *error;
    int upgrade;      /* a WebSocket handshake: relayed after the upstream's 101 */
    tunnel_t *tunnel; /* after the 101 */
    uint64_t idle_ms; /* of the current attempt */
    const char *tunnel_summary;
    uint64_t tunnel_bytes_to_client; /* the access log's bytes_sent for a WebSocket session */
    int sse; /* relaying a text/event-stream response (the active_streams gauge) */

    /* The body sent upstream: the client's, or a copy that asks for the usage chunk. */
    const char *up_body;
    size_t up_body_len;
    int forced_usage;   /* that copy: the usage chunk is the proxy's, kept from the client */
    int ends_with_done; /* chat/completions or completions: a stream ends with data: [DONE] */
    /* Forwarding by whole events (forced usage on an SSE answer), so the usage-only event can
     * be left out: held keeps the start of an event still arriving; during a feed, bytes
     * [fwd_from, fwd_to) of feed are whole events to forward; held_passed: the event was too
     * big to hold and its start went out already. */
    int by_events, held_passed;
    buf_t held;
    const char *feed;
    refbuf_t *feed_ref;
    size_t fwd_from, fwd_to;
} proxy_req_t;

static void proxy_finish(proxy_req_t *p, int record);

static uint64_t to_ms(double seconds) {
    return (uint64_t)(seconds * 1000.0 + 0.5);
}

static void respond_error(proxy_req_t *p, int status, const char *type, const char *message) {
    p->status = status;
    p->error = message;
    http_respond_error(p->http, status, type, message);
}

/* ---------------------------------------------------------------- upstream events */

static int name_is(const route_header_t *h, const char *lit, size_t n) {
    return h->name_len == n && memcmp(h->name, lit, n) == 0;
}

static int is_hop_by_hop(const route_header_t *h, const route_header_t *connection) {
    /* By length first: this runs for every response header. */
    switch (h->name_len) {
    case 2:
        if (name_is(h, "te", 2)) return 1;
        break;
    case 7:
        if (name_is(h, "trailer", 7) || name_is(h, "upgrade", 7)) return 1;
        break;
    case 10:
        if (name_is(h, "connection", 10) || name_is(h, "keep-alive", 10)) return 1;
        break;
    case 14:
        if (name_is(h, "content-length", 14)) return 1;
        break;
    case 16:
        if (name_is(h, "proxy-connection", 16)) return 1;
        break;
    case 17:
        if (name_is(h, "transfer-encoding", 17)) return 1;
        break;
    }
    /* CORS is ours alone: an upstream's copy would double or contradict it. */
    if (h->name_len >= 15 && memcmp(h->name, "access-control-", 15) == 0) return 1;
    if (connection) { /* headers the upstream named in Connection are hop-by-hop too */
        const char *v = connection->value;
        while (*v) {
            while (*v == ' ' || *v == ',')
                v++;
            size_t n = strcspn(v, " ,");
            if (n && n == h->name_len && strncasecmp(v, h->name, n) == 0) return 1;
            v += n;
        }
    }
    return 0;
}

/* Names were lower-cased for lookups; clients get the usual "Content-Type" spelling. */
static void append_canonical_name(buf_t *out, const char *name, size_t len) {
    if (buf_reserve(out, len) != 0) return;
    char *dst = out->data + out->len;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        dst[i] = (i == 0 || name[i - 1] == '-') && ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch;
    }
    out->len += len;
}

static int should_fail_over(const proxy_req_t *p, int status) {
    /* A WebSocket handshake answered 429 or 5xx fails over as any request does: nothing went
     * to the client yet (SPEC, Proxy step 5); "no failover" starts with the 101. */
    if (status == 429 || status >= 500) return 1;
    /* With sk "asis" a 401/403 is about the client's own key: theirs to see. */
    return (status == 401 || status == 403) && !p->asis;
}

static void try_next_candidate(proxy_req_t *p);
static void on_event_end(void *ud, size_t end, int flags);

/* "upstream 3 (api.example.com:443)": an attempt as error messages name it, by id and host,
 * never by key or path (the path may hold a deployment name, the query a key). */
static void append_attempt_name(buf_t *b, const proxy_req_t *p, size_t i) {
    const upstream_url_t *u = p->urls[i];
    buf_printf(b, "upstream %lld (", (long long)p->attempts[i].upstream_id);
    if (!u)
        buf_appends(b, "invalid endpoint");
    else
        buf_printf(b, strchr(u->host, ':') ? "[%s]:%d" : "%s:%d", u->host, u->port);
    buf_appends(b, ")");
}

static void on_up_head(void *ud, int status, const route_header_t *headers, size_t n,
                       int64_t content_length) {
    proxy_req_t *p = ud;
    route_attempt_t *a = &p->attempts[p->n_attempts - 1];
    a->status = status;
    if (status == 400 && p->forced_usage) {
        /* An upstream that does not know stream_options (older Azure OpenAI API versions, some
         * compatible servers) refuses the forced flag: the same candidate is asked again with
         * the body as the client sent it. No generation started, so it costs one quick 400. */
        upstream_cancel(p->up);
        p->up = NULL;
        size_t len = 0;
        p->up_body = http_request_body(p->http, &len);
        p->up_body_len = len;
        p->forced_usage = 0;
        upstream_url_release(p->url_refs[p->n_attempts - 1]);
        p->n_attempts--;
        p->next--;
        try_next_candidate(p);
        return;
    }
    if (should_fail_over(p, status)) {
        a->failed = 1;
        a->error = arena_printf(http_request_arena(p->http), "status %d", status);
        if (p->ctx->metrics)
            metrics_observe_upstream_failure(p->ctx->metrics, a->upstream_id, a->endpoint,
                                             "status");
        /* The last candidate's own 429 is the best answer left: its body and Retry-After /
         * x-ratelimit-* headers tell an SDK when to try again (a 502 would make it retry at
         * once). It still counts as that upstream's failure. */
        if (status == 429 && p->next >= p->n_cands) {
            buf_t name = {0};
            append_attempt_name(&name, p, p->n_attempts - 1);
            p->error = arena_printf(http_request_arena(p->http),
                                    "every upstream failed; the last, %s, answered 429",
                                    name.data ? name.data : "upstream");
            buf_free(&name);
        } else {
            upstream_cancel(p->up);
            p->up = NULL;
            try_next_candidate(p);
            return;
        }
    }
    const route_header_t *connection = NULL, *content_type = NULL;
    for (size_t i = 0; i < n; i++) {
        if (name_is(&headers[i], "connection", 10)) connection = &headers[i];
        if (name_is(&headers[i], "content-type", 12)) content_type = &headers[i];
    }
    /* http_response_start copies the lines, so the loop's scratch buffer holds them. */
    buf_t *out = &p->ctx->scratch;
    out->len = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_hop_by_hop(&headers[i], connection)) continue;
        append_canonical_name(out, headers[i].name, headers[i].name_len);
        buf_append(out, ": ", 2);
        buf_append(out, headers[i].value, headers[i].value_len);
        buf_append(out, "\r\n", 2);
    }
    p->sent_head = 1;
    p->status = status;
    p->ttfb_ns = util_now_mono_ns() - http_request_start_mono_ns(p->http);
    if (content_type)
        p->ex =
            extract_pool_get(&p->ctx->extract_pool, content_type->value, content_type->value_len);
    /* Forwarding by events leaves the usage chunk out (and "usage": null members): the body
     * the client gets is shorter than the upstream's Content-Length, so it goes chunked. */
    int filtered = p->forced_usage && extract_is_sse(p->ex);
    http_response_start(p->http, status, out->data, out->len, filtered ? -1 : content_length);
    out->len = 0;
    if (content_type && strncasecmp(content_type->value, "text/event-stream", 17) == 0) {
        p->sse = 1;
        metrics_stream_started(p->ctx->metrics);
    }
    if (filtered) {
        p->by_events = 1;
        extract_set_cut_cb(p->ex, on_event_end, p);
    }
}

/* An event bigger than this (a usage chunk is a few hundred bytes) is forwarded as it comes. */
#define HOLD_MAX (64 * 1024)

static void forward_range(proxy_req_t *p, size_t from, size_t to) {
    if (to > from) http_response_write(p->http, p->feed + from, to - from, p->feed_ref);
}

/* The "usage": null member in one raw event (forcing made the upstream add it to every
 * chunk; a client that did not ask would not have had it): 1 with *e, relative to raw. */
static int usage_null_edit(const char *raw, size_t len, body_edit_t *e) {
    size_t at, n;
    if (sse_event_data(raw, len, &at, &n) != 0 ||
        body_edit_remove_null_member(raw + at, n, "usage", e) != 1)
        return 0;
    e->at += at;
    return 1;
}

/* Writes (copies) one whole event, without its "usage": null when it has one. */
static void write_event_copy(proxy_req_t *p, const char *raw, size_t len, int flags) {
    body_edit_t e;
    if ((flags & EXTRACT_EVENT_USAGE_NULL) && usage_null_edit(raw, len, &e)) {
        http_response_write(p->http, raw, e.at, NULL);
        raw += e.at + e.cut;
        len -= e.at + e.cut;
    }
    http_response_write(p->http, raw, len, NULL);
}

/* extract_cut_cb: an event ended at `end` of the buffer being fed; its bytes there begin at
 * fwd_to. The usage-only chunk is the proxy's (the client did not ask for it): left out. */
static void on_event_end(void *ud, size_t end, int flags) {
    proxy_req_t *p = ud;
    size_t start = p->fwd_to;
    if (p->held_passed) { /* its start is out: the rest follows as it is */
        p->held_passed = 0;
        flags = 0;
    }
    if (p->held.len) { /* it began in an earlier buffer: it goes out whole from held */
        if (!(flags & EXTRACT_EVENT_USAGE_ONLY)) {
            if (buf_append(&p->held, p->feed + start, end - start) == 0)
                write_event_copy(p, p->held.data, p->held.len, flags);
            else { /* no memory: as it came */
                http_response_write(p->http, p->held.data, p->held.len, NULL);
                forward_range(p, start, end);
            }
        }
        p->held.len = 0;
        p->fwd_from = p->fwd_to = end;
        return;
    }
    body_edit_t e;
    if (flags & EXTRACT_EVENT_USAGE_ONLY) {
        forward_range(p, p->fwd_from, start);
        p->fwd_from = end;
    } else if ((flags & EXTRACT_EVENT_USAGE_NULL) &&
               usage_null_edit(p->feed + start, end - start, &e)) {
        forward_range(p, p->fwd_from, start + e.at); /* in place, around the member */
        p->fwd_from = start + e.at + e.cut;
    }
    p->fwd_to = end;
}

/* Forwards the whole events in data at once, keeps the start of the next one. */
static void forward_by_events(proxy_req_t *p, const char *data, size_t len, refbuf_t *ref) {
    p->feed = data;
    p->feed_ref = ref;
    p->fwd_from = p->fwd_to = 0;
    extract_feed(p->ex, data, len);
    forward_range(p, p->fwd_from, p->fwd_to);
    size_t rest = len - p->fwd_to;
    if (p->held_passed) {
        forward_range(p, p->fwd_to, len);
    } else if (rest > HOLD_MAX - p->held.len) {
        if (p->held.len) http_response_write(p->http, p->held.data, p->held.len, NULL);
        p->held.len = 0;
        forward_range(p, p->fwd_to, len);
        p->held_passed = 1;
    } else if (rest && buf_append(&p->held, data + p->fwd_to, rest) != 0) {
        forward_range(p, p->fwd_to, len); /* no memory to hold it: let it go as it is */
        p->held_passed = 1;
    }
    p->feed = NULL;
    p->feed_ref = NULL;
}

static void on_up_body(void *ud, const char *data, size_t len, refbuf_t *ref) {
    proxy_req_t *p = ud;
    if (p->by_events) {
        forward_by_events(p, data, len, ref);
        if (!http_request_client_connected(p->http)) return;
    } else {
        if (p->ex) extract_feed(p->ex, data, len);
        if (http_response_write(p->http, data, len, ref) != 0) return;
    }
    if (http_response_pending(p->http) > HTTP_WRITE_HIGH_WATER) upstream_pause(p->up);
}

/* The upstream broke a response that already started. An SSE client gets one last event
 * saying so and the proper end of the body, so an SDK raises instead of returning a cut
 * answer as if it were whole; any other body is cut (no terminating chunk), which tells an
 * HTTP client the same. at_boundary: the bytes forwarded so far end between events. */
static void end_broken_response(proxy_req_t *p, int at_boundary) {
    if (!p->ex || !extract_is_sse(p->ex)) {
        http_response_abort(p->http);
        return;
    }
    if (p->by_events && !p->held_passed) {
        p->held.len = 0; /* never forwarded: the client is between events */
        at_boundary = 1;
    }
    buf_t *ev = &p->ctx->scratch;
    ev->len = 0;
    /* An event cut short is ended first, so the error is an event of its own. */
    if (!at_boundary) buf_appends(ev, "\n\n");
    buf_appends(ev, "data: {\"error\": {\"message\": ");
    buf_append_json_string(ev, p->error, strlen(p->error));
    buf_appends(ev, ", \"type\": \"upstream_error\"}}\n\n");
    if (ev->data) http_response_write(p->http, ev->data, ev->len, NULL);
    ev->len = 0;
    http_response_end(p->http);
}

/* The exchange's error for an upstream that failed after the response head went out. */
static void set_broken_error(proxy_req_t *p, route_attempt_t *a, int kind, const char *why) {
    a->failed = 1;
    a->error = arena_strdup(http_request_arena(p->http), why);
    p->error = arena_printf(http_request_arena(p->http), "%s (upstream %s: %s)",
                            kind == UPSTREAM_ERR_CLOSED ? "upstream closed mid-body"
                                                        : "upstream failed mid-body",
                            a->endpoint, why);
    if (!p->error) p->error = "upstream failed mid-body";
}

static void on_client_drain(http_request_t *http) {
    proxy_req_t *p = http_request_handler_data(http);
    if (p && p->up) upstream_resume(p->up);
}

static void on_up_done(void *ud) {
    proxy_req_t *p = ud;
    p->up = NULL;
    int at_boundary = extract_at_event_boundary(p->ex);
    if (p->ex && extract_is_sse(p->ex)) extract_finish(p->ex); /* a last unended event too */
    /* A chat stream is complete with its [DONE]: without it the answer may be cut short. */
    if (p->ends_with_done && p->status >= 200 && p->status < 300 && p->ex &&
        extract_is_sse(p->ex) && !extract_saw_done(p->ex)) {
        set_broken_error(p, &p->attempts[p->n_attempts - 1], UPSTREAM_ERR_CLOSED,
                         "the stream ended before data: [DONE]");
        end_broken_response(p, at_boundary);
        proxy_finish(p, 1);
        return;
    }
    if (p->held.len) http_response_write(p->http, p->held.data, p->held.len, NULL);
    p->held.len = 0;
    http_response_end(p->http);
    proxy_finish(p, 1);
}

static void on_up_error(void *ud, int kind, const char *message) {
    proxy_req_t *p = ud;
    p->up = NULL;
    route_attempt_t *a = &p->attempts[p->n_attempts - 1];
    a->failed = 1;
    a->timed_out = kind == UPSTREAM_ERR_TIMEOUT;
    a->error = arena_strdup(http_request_arena(p->http), message);
    if (p->ctx->metrics)
        metrics_observe_upstream_failure(p->ctx->metrics, a->upstream_id, a->endpoint,
                                         kind == UPSTREAM_ERR_TIMEOUT    ? "timeout"
                                         : kind == UPSTREAM_ERR_TLS      ? "tls"
                                         : kind == UPSTREAM_ERR_DNS      ? "dns"
                                         : kind == UPSTREAM_ERR_CLOSED   ? "closed"
                                         : kind == UPSTREAM_ERR_PROTOCOL ? "protocol"
                                                                         : "connect");
    if (!p->sent_head) {
        try_next_candidate(p);
        return;
    }
    /* Bytes already reached the client: no failover; it must see that the answer broke. */
    set_broken_error(p, a, kind, message);
    end_broken_response(p, extract_at_event_boundary(p->ex));
    proxy_finish(p, 1);
}

/* ---------------------------------------------------------------- WebSocket */

static void append3(buf_t *b, const char *a, const char *v, size_t vlen, const char *c);

/* A WebSocket handshake (RFC 6455 section 4.1): GET with Connection: upgrade and an Upgrade
 * naming websocket. Other upgrades (h2c) are answered as plain HTTP. */
static int is_websocket_upgrade(const http_request_t *h) {
    if (!http_request_is_upgrade(h) || strcmp(http_request_method(h), "GET") != 0) return 0;
    const route_header_t *up = http_request_header(h, "upgrade");
    for (const char *v = up ? up->value : ""; *v;) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        size_t n = strcspn(v, ", \t");
        if (n == 9 && strncasecmp(v, "websocket", 9) == 0) return 1;
        v += n;
    }
    return 0;
}

/* The handshake's own headers, to the upstream (the key proves the 101 answers this request)
 * and, from the upstream's 101, back to the client. */
static int is_websocket_header(const route_header_t *h) {
    return h->name_len > 14 && memcmp(h->name, "sec-websocket-", 14) == 0;
}

/* Spelled as RFC 6455 does ("Sec-WebSocket-Accept"): some clients compare case-sensitively. */
static void append_websocket_header(buf_t *b, const route_header_t *h) {
    buf_appends(b, "Sec-WebSocket-");
    append_canonical_name(b, h->name + 14, h->name_len - 14);
    append3(b, ": ", h->value, h->value_len, "\r\n");
}

/* A browser's token rides in the subprotocol list (auth.h): with a key the proxy holds it
 * is the client's credential, not the upstream's, so it is taken out (the upstream gets
 * Authorization: Bearer <sk>); the other subprotocols go as they came. */
static void append_protocols_without_token(buf_t *b, const route_header_t *h) {
    size_t tlen, at, elen;
    const char *v = h->value;
    if (!auth_ws_protocol_token(v, h->value_len, &tlen, &at, &elen)) {
        append_websocket_header(b, h);
        return;
    }
    size_t before = at, after = at + elen;
    while (before > 0 && (v[before - 1] == ' ' || v[before - 1] == '\t'))
        before--;
    if (before > 0 && v[before - 1] == ',')
        before--; /* the comma ahead of it goes too */
    else if (after < h->value_len && v[after] == ',')
        after++;
    while (before == 0 && after < h->value_len && (v[after] == ' ' || v[after] == '\t'))
        after++;
    if (before == 0 && after >= h->value_len) return; /* the token was the only entry */
    buf_appends(b, "Sec-WebSocket-Protocol: ");
    buf_append(b, v, before);
    buf_append(b, v + after, h->value_len - after);
    buf_appends(b, "\r\n");
}

static void append_upgrade_headers(const proxy_req_t *p, buf_t *b) {
    buf_appends(b, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    size_t n = http_request_header_count(p->http);
    for (size_t i = 0; i < n; i++) {
        const route_header_t *v = http_request_header_at(p->http, i);
        if (!v->name || !is_websocket_header(v)) continue;
        if (!p->asis && name_is(v, "sec-websocket-protocol", 22))
            append_protocols_without_token(b, v);
        else
            append_websocket_header(b, v);
    }
}

static void on_tunnel_done(void *ud, const tunnel_stats_t *st);

/* The record's response column holds the session in a line (no new column: the Go
 * program's readers of the table and of /admin/request_records see it as it is). */
static void tunnel_summarize(proxy_req_t *p, const tunnel_stats_t *st) {
    p->tunnel_bytes_to_client = st->bytes_from[1];
    p->tunnel_summary = arena_printf(
        http_request_arena(p->http),
        "websocket: %llu bytes to upstream, %llu bytes to client (frames not parsed); %s",
        (unsigned long long)st->bytes_from[0], (unsigned long long)st->bytes_from[1],
        st->reason ? st->reason : "closed");
    if (st->error && !p->error) p->error = st->reason;
    if (p->error) p->error = arena_strdup(http_request_arena(p->http), p->error);
}

static void on_up_upgrade(void *ud, const route_header_t *headers, size_t n,
                          struct stream *upstream, const char *early, size_t early_len,
                          refbuf_t *ref) {
    proxy_req_t *p = ud;
    p->up = NULL;
    route_attempt_t *a = &p->attempts[p->n_attempts - 1];
    a->status = 101;
    buf_t lines = {0}, from_client = {0};
    for (size_t i = 0; i < n; i++) {
        if (is_websocket_header(&headers[i])) append_websocket_header(&lines, &headers[i]);
    }
    struct stream *client =
        http_request_upgrade(p->http, "websocket", lines.data, lines.len, &from_client);
    buf_free(&lines);
    p->status = 101;
    p->ttfb_ns = util_now_mono_ns() - http_request_start_mono_ns(p->http);
    static const char *names[2] = {"client", "upstream"};
    if (client) {
        p->sent_head = 1;
        p->tunnel =
            tunnel_start(p->ctx->loop, client, upstream, names, p->idle_ms, on_tunnel_done, p);
    }
    if (!p->tunnel) {
        stream_close(upstream);
        if (client) {
            stream_close(client);
            http_request_upgrade_end(p->http);
        } else {
            http_response_abort(p->http);
        }
        p->error = client ? "out of memory" : "the client went away before the 101";
        proxy_finish(p, 1);
        buf_free(&from_client);
        return;
    }
    /* Bytes that came with the heads: the upstream's go to the client after its 101. */
    tunnel_send(p->tunnel, 1, from_client.data, from_client.len, NULL);
    tunnel_send(p->tunnel, 0, early, early_len, ref);
    buf_free(&from_client);
}

static void on_tunnel_done(void *ud, const tunnel_stats_t *st) {
    proxy_req_t *p = ud;
    p->tunnel = NULL;
    tunnel_summarize(p, st);
    http_request_upgrade_end(p->http);
    proxy_finish(p, 1);
}

static const upstream_callbacks_t upstream_events = {
    .on_head = on_up_head,
    .on_body = on_up_body,
    .on_done = on_up_done,
    .on_error = on_up_error,
    .on_upgrade = on_up_upgrade,
};

/* ---------------------------------------------------------------- forwarding */

/* endpoint path + request path after /v1 + query: the endpoint's own query first, then the
 * client's, joined by '&' (each as it came: nothing is decoded or re-encoded). */
static char *build_target(proxy_req_t *p) {
    const http_request_t *h = p->http;
    const char *rest = http_request_path(h) + 3; /* the path after "/v1" */
    const char *client_query = http_request_query(h);
    const char *base = p->url->base_path, *base_query = p->url->query;
    if (!*base && !*rest) rest = "/";
    size_t bl = strlen(base), rl = strlen(rest), eql = strlen(base_query);
    size_t cql = client_query ? strlen(client_query) : 0;
    char *t = arena_alloc(http_request_arena(p->http), bl + rl + 1 + eql + 1 + cql + 1);
    if (!t) return NULL;
    char *o = t;
    memcpy(o, base, bl);
    o += bl;
    memcpy(o, rest, rl);
    o += rl;
    if (eql || client_query) *o++ = '?';
    memcpy(o, base_query, eql);
    o += eql;
    if (eql && cql) *o++ = '&';
    if (client_query) {
        memcpy(o, client_query, cql);
        o += cql;
    }
    *o = '\0';
    return t;
}

/* Appends pieces with no format parsing: this runs for every request. */
static void append3(buf_t *b, const char *a, const char *v, size_t vlen, const char *c) {
    buf_appends(b, a);
    buf_append(b, v, vlen);
    buf_appends(b, c);
}

#define NAME_IS(h, lit) name_is((h), lit, sizeof(lit) - 1)

/* Whether `name` is in a comma-separated list (config forward_headers), case-insensitively. */
static int in_list(const char *list, const char *name, size_t len) {
    for (const char *q = list; q && *q;) {
        while (*q == ' ' || *q == '\t' || *q == ',')
            q++;
        size_t n = strcspn(q, ", \t");
        if (n == len && strncasecmp(q, name, n) == 0) return 1;
        q += n;
    }
    return 0;
}

/* Which client headers reach the upstream (SPEC, Proxy step 3): the body's type, what the
 * client accepts, the OpenAI API's own request options (OpenAI-Beta selects beta APIs,
 * Idempotency-Key makes a retry safe) and the SDKs' X-Stainless-* telemetry; the client's
 * organization and project only with sk "asis" (with a key the proxy holds they belong to
 * that key's account, not to the client); and the operator's forward_headers. Never what
 * the proxy itself decides: framing, Host, Authorization, hop-by-hop. */
static int forwarded(const route_header_t *h, int asis, const char *extra) {
    if (NAME_IS(h, "content-type") || NAME_IS(h, "accept") || NAME_IS(h, "openai-beta") ||
        NAME_IS(h, "idempotency-key"))
        return 1;
    if (h->name_len > 12 && memcmp(h->name, "x-stainless-", 12) == 0) return 1;
    if (NAME_IS(h, "openai-organization") || NAME_IS(h, "openai-project")) return asis;
    if (NAME_IS(h, "host") || NAME_IS(h, "authorization") || NAME_IS(h, "content-length") ||
        NAME_IS(h, "transfer-encoding") || NAME_IS(h, "connection") || NAME_IS(h, "keep-alive") ||
        NAME_IS(h, "upgrade") || NAME_IS(h, "te") || NAME_IS(h, "trailer") ||
        (h->name_len > 6 && memcmp(h->name, "proxy-", 6) == 0))
        return 0;
    return extra && *extra && in_list(extra, h->name, h->name_len);
}

static void build_headers(proxy_req_t *p, const route_candidate_t *c, buf_t *b) {
    const http_request_t *h = p->http;
    buf_reserve(b, 256);
    append3(b, "Host: ", p->url->host_header, strlen(p->url->host_header), "\r\n");
    if (p->asis) {
        const route_header_t *v = http_request_header(h, "authorization");
        if (v) append3(b, "Authorization: ", v->value, v->value_len, "\r\n");
    } else {
        append3(b, "Authorization: Bearer ", c->sk, strlen(c->sk), "\r\n");
    }
    const char *extra = config_current(p->ctx)->forward_headers;
    size_t n_headers = http_request_header_count(h);
    for (size_t i = 0; i < n_headers; i++) {
        const route_header_t *v = http_request_header_at(h, i);
        if (!v->name || !forwarded(v, p->asis, extra)) continue;
        append_canonical_name(b, v->name, v->name_len);
        append3(b, ": ", v->value, v->value_len, "\r\n");
    }
    if (p->upgrade) append_upgrade_headers(p, b);
    /* The body is complete in memory, so it always goes with a Content-Length. */
    if (p->up_body_len || http_request_header(h, "content-length") ||
        http_request_header(h, "transfer-encoding")) {
        char num[24];
        size_t n = util_fmt_i64(num, (int64_t)p->up_body_len);
        append3(b, "Content-Length: ", num, n, "\r\n");
    }
}

static void try_next_candidate(proxy_req_t *p) {
    route_ctx_t *ctx = p->ctx;
    while (p->next < p->n_cands) {
        const route_candidate_t *c = &p->cands[p->next++];
        route_attempt_t *a = &p->attempts[p->n_attempts++];
        memset(a, 0, sizeof(*a));
        p->url_refs[p->n_attempts - 1] = NULL;
        p->urls[p->n_attempts - 1] = NULL;
        a->upstream_id = c->id;
        const char *why = NULL, *label = NULL;
        upstream_url_ref_t *ref = upstream_url_get(ctx, c->endpoint, &p->url, &label, &why);
        if (!ref) {
            a->endpoint = "(invalid endpoint)";
            a->error = why;
            a->failed = 1;
            /* Never contacted, but an attempt all the same: the operator's dashboard shows
             * the upstream that cannot work, not a hole. */
            if (ctx->metrics)
                metrics_observe_upstream_failure(ctx->metrics, a->upstream_id, a->endpoint,
                                                 "invalid_endpoint");
            continue;
        }
        p->url_refs[p->n_attempts - 1] = ref;
        p->urls[p->n_attempts - 1] = p->url;
        a->endpoint = label;
        p->asis = strcmp(c->sk, "asis") == 0;

        const route_config_t *cfg = config_current(ctx);
        double connect = c->connect_timeout >= 0 ? c->connect_timeout : cfg->connect_timeout;
        double headers = p->rreq.stream
                             ? (c->stream_timeout >= 0 ? c->stream_timeout : cfg->stream_timeout)
                             : (c->timeout >= 0 ? c->timeout : cfg->timeout);
        double idle = c->idle_timeout >= 0 ? c->idle_timeout : cfg->idle_timeout;
        p->idle_ms = to_ms(idle);

        /* upstream_request copies the header lines: the loop's scratch buffer holds them. */
        buf_t *hdrs = &ctx->scratch;
        hdrs->len = 0;
        build_headers(p, c, hdrs);
        upstream_request_opts_t o = {
            .url = p->url,
            .method = http_request_method(p->http),
            .target = build_target(p),
            .headers = hdrs->data,
            .headers_len = hdrs->len,
            .body = p->up_body,
            .body_len = p->up_body_len,
            .head_request = strcmp(http_request_method(p->http), "HEAD") == 0,
            .upgrade = p->upgrade,
            .connect_timeout_ms = to_ms(connect),
            .header_timeout_ms = to_ms(headers),
            .idle_timeout_ms = to_ms(idle),
            .connect_ns = &a->connect_ns,
        };
        p->up =
            o.target && hdrs->data ? upstream_request(ctx->pool, &o, &upstream_events, p) : NULL;
        hdrs->len = 0;
        if (p->up) return;
        a->error = "out of memory";
        a->failed = 1;
    }
    /* Every candidate failed: say which and why, by upstream id and host, never by key. */
    buf_t msg = {0};
    buf_appends(&msg, "all upstreams failed: ");
    for (size_t i = 0; i < p->n_attempts; i++) {
        if (i) buf_appends(&msg, "; ");
        append_attempt_name(&msg, p, i);
        buf_printf(&msg, ": %s", p->attempts[i].error ? p->attempts[i].error : "failed");
    }
    char *text = arena_strndup(http_request_arena(p->http), msg.data ? msg.data : "", msg.len);
    buf_free(&msg);
    if (!text) text = "all upstreams failed";
    if (p->n_attempts && p->attempts[p->n_attempts - 1].timed_out) {
        /* A timeout is most often a slow generation: an SDK that retried would start the same
         * slow, paid generation again, so say it should not (the OpenAI SDKs honour this). */
        static const char no_retry[] = "x-should-retry: false\r\n";
        p->status = 504;
        p->error = text;
        http_respond_error_with(p->http, 504, "timeout_error", text, no_retry, sizeof no_retry - 1);
    } else {
        respond_error(p, 502, "upstream_error", text);
    }
    proxy_finish(p, 1);
}

/* A stream to chat/completions or completions that did not ask for its usage gets it anyway
 * (config force_stream_usage): the accounting needs it, and the usage chunk it adds is kept
 * from the client (forward_by_events). A body the edit cannot parse goes as it came. */
static void force_stream_usage(proxy_req_t *p) {
    const char *path = http_request_path(p->http);
    p->ends_with_done =
        strcmp(path, "/v1/chat/completions") == 0 || strcmp(path, "/v1/completions") == 0;
    if (!p->ends_with_done || !p->rreq.stream || !config_current(p->ctx)->force_stream_usage ||
        strcmp(http_request_method(p->http), "POST") != 0)
        return;
    body_edit_t e;
    if (body_edit_include_usage(p->up_body, p->up_body_len, &e) != 1) return;
    size_t n = body_edit_len(p->up_body_len, &e);
    char *b = arena_alloc(http_request_arena(p->http), n);
    if (!b) return;
    body_edit_apply(p->up_body, p->up_body_len, &e, b);
    p->up_body = b;
    p->up_body_len = n;
    p->forced_usage = 1;
}

/* ---------------------------------------------------------------- life */

static void on_client_abort(http_request_t *http) {
    proxy_req_t *p = http_request_handler_data(http);
    if (!p) return;
    if (p->tunnel) { /* only shutdown closes an upgraded connection from the server's side */
        tunnel_stats_t st;
        tunnel_close(p->tunnel, &st);
        p->tunnel = NULL;
        st.reason = "closed at shutdown";
        tunnel_summarize(p, &st);
        proxy_finish(p, 1);
        return;
    }
    p->client_aborted = 1;
    if (p->up) {
        upstream_cancel(p->up);
        p->up = NULL;
    }
    /* The shutdown grace being over closes every client: that is not the client's doing. */
    p->error = p->ctx->shutdown_closing ? "shutdown" : http_request_abort_reason(http);
    proxy_finish(p, 1);
}

static void proxy_finish(proxy_req_t *p, int record) {
    if (p->finished) return;
    p->finished = 1;
    http_request_t *http = p->http;
    int64_t elapsed = util_now_mono_ns() - http_request_start_mono_ns(http);
    route_res_t res = {0};
    res.status = p->client_aborted && !p->sent_head ? 499 : p->status;
    res.error = p->error;
    res.client_aborted = p->client_aborted;
    res.elapsed_ns = elapsed;
    res.ttfb_ns = p->ttfb_ns;
    res.attempts = p->attempts;
    res.n_attempts = p->n_attempts;
    res.sse = p->sse;
    /* A tunnel's bytes bypass the HTTP response: its own count says what the client got. */
    res.bytes_sent = http_response_bytes_sent(http) + p->tunnel_bytes_to_client;
    if (p->sent_head && p->n_attempts) {
        res.upstream_id = p->attempts[p->n_attempts - 1].upstream_id;
        res.upstream_endpoint = p->attempts[p->n_attempts - 1].endpoint;
    }
    if (p->tunnel_summary) {
        res.content = p->tunnel_summary;
        res.content_len = strlen(p->tunnel_summary);
    }
    if (p->ex) {
        extract_finish(p->ex);
        res.content = extract_content(p->ex, &res.content_len);
        res.model = extract_model(p->ex);
        res.has_usage =
            extract_usage(p->ex, &res.prompt_tokens, &res.completion_tokens, &res.total_tokens);
        /* All zeros is what some servers send when they counted nothing: no usage known. */
        if (res.has_usage && !res.prompt_tokens && !res.completion_tokens && !res.total_tokens)
            res.has_usage = 0;
        int details = res.has_usage
                          ? extract_usage_details(p->ex, &res.cached_tokens, &res.reasoning_tokens)
                          : 0;
        res.has_cached = (details & EXTRACT_HAS_CACHED) != 0;
        res.has_reasoning = (details & EXTRACT_HAS_REASONING) != 0;
    }
    if (record) {
        /* Accounting is C's, whatever the hooks do: on_response only observes (it may add to
         * the row or veto it). */
        store_t *store = p->ctx->store;
        records_count(store, &res);
        store_record_t *rec =
            store ? records_build(&p->rreq, &res, config_current(p->ctx)->records_bodies) : NULL;
        if (store && !rec) route_log(LOG_ERROR, "proxy: out of memory, record %s lost", p->rreq.id);
        hooks_on_response(p->ctx->hooks, &p->rreq, &res, &rec);
        if (rec) store_loop_record(store, rec);
    }
    /* Metrics and the access log take what they need from the finished result. */
    metrics_observe_request(p->ctx->metrics, &p->rreq, &res);
    access_log_request(p->ctx->access_log, &p->rreq, &res);
    hooks_release(p->ctx->hooks, &p->rreq);
    if (p->ex) extract_pool_put(&p->ctx->extract_pool, p->ex);
    buf_free(&p->held);
    for (size_t i = 0; i < p->n_attempts; i++)
        upstream_url_release(p->url_refs[i]);
    http_request_set_handler(http, NULL, NULL, NULL);
    http_request_release(http);
}

void proxy_handle(http_request_t *http) {
    route_ctx_t *ctx = http_request_ctx(http);
    proxy_req_t *p = arena_alloc(http_request_arena(http), sizeof(*p));
    if (!p) {
        http_respond_error(http, 500, "server_error", "out of memory");
        return;
    }
    memset(p, 0, sizeof(*p));
    p->ctx = ctx;
    p->http = http;
    http_request_retain(http);
    http_request_set_handler(http, p, on_client_abort, on_client_drain);
    http_request_set_logs_itself(http);

    p->rreq.http = http;
    util_uuid7_rng(&ctx->rng, p->rreq.id, http_request_start_wall_ns(http));
    size_t body_len = 0;
    const char *body = http_request_body(http, &body_len);
    extract_request_fields_arena(body, body_len, http_request_arena(http), &p->rreq.model,
                                 &p->rreq.stream);

    int status = 403;
    const char *message = NULL;
    int allowed = hooks_authorize(ctx->hooks, &p->rreq, &status, &message);
    if (allowed != 1) {
        /* A refusal is not recorded; a hook that failed is (it passed no verdict). */
        int hook_failed = allowed < 0;
        if (!message) message = hook_failed ? "authorize hook failed" : "unauthorized";
        respond_error(p, status, hook_failed ? "server_error" : "authorization_error", message);
        proxy_finish(p, hook_failed);
        return;
    }

    message = NULL;
    if (hooks_pick_upstream(ctx->hooks, &p->rreq, &p->cands, &p->n_cands, &message) != 0 ||
        p->n_cands == 0) {
        respond_error(p, 500, "server_error", message ? message : "no upstream available");
        proxy_finish(p, 1);
        return;
    }
    p->up_body = body;
    p->up_body_len = body_len;
    force_stream_usage(p);
    p->attempts = arena_alloc(http_request_arena(http), p->n_cands * sizeof(*p->attempts));
    p->url_refs = arena_alloc(http_request_arena(http), p->n_cands * sizeof(*p->url_refs));
    p->urls = arena_alloc(http_request_arena(http), p->n_cands * sizeof(*p->urls));
    if (!p->attempts || !p->url_refs || !p->urls) {
        respond_error(p, 500, "server_error", "out of memory");
        proxy_finish(p, 1);
        return;
    }
    p->upgrade = is_websocket_upgrade(http);
    try_next_candidate(p);
}
