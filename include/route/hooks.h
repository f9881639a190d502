/* hooks.h: the Lua side of routing decisions. One Lua 5.4 state per event loop runs the
 * operator's scripts/route.lua (or the embedded default); proxy.c calls the three hooks
 * through these functions and never touches Lua itself. */
#ifndef ROUTE_HOOKS_H
#define ROUTE_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "route/ctx.h"
#include "route/http.h"
#include "route/store.h"

/* What a hook sees of a request. Strings live in the request's arena. */
typedef struct route_req {
    http_request_t *http; /* method, path, query, headers, body, client_ip */
    char id[37];
    char *model;           /* the body's top-level "model", or NULL */
    int stream;            /* the body's top-level "stream" is true */
    int obj_ref;           /* the request's Lua object (lua_req.c); 0: no Lua hook has seen it */
    struct hookset *hooks; /* the hook table it pinned on its first hook (hooks.c); NULL before */
    int recorded_own; /* a script wrote this request's row itself (route.record{id = req.id}) */
} route_req_t;

/* One candidate upstream, copied from the snapshot into the request's arena. Timeouts in
 * seconds; a hook may override them per request by setting fields on the upstream table
 * (connect_timeout, timeout, stream_timeout, idle_timeout); < 0 means "use the config". */
typedef struct route_candidate {
    int64_t id;
    char *sk;
    char *endpoint;
    double connect_timeout, timeout, stream_timeout, idle_timeout;
} route_candidate_t;

typedef struct route_attempt {
    int64_t upstream_id;
    const char *endpoint;
    int status;         /* upstream status, 0 when none came */
    const char *error;  /* why it failed, NULL when it did not */
    int failed;         /* counts as an upstream failure */
    int timed_out;      /* failed by a timeout (connect, headers or idle) */
    int64_t connect_ns; /* DNS + TCP (+ TLS) of a new connection; 0 when a pooled one served */
} route_attempt_t;

typedef struct route_res {
    int status; /* what the client got (0: client went away before any) */
    int64_t upstream_id;
    const char *upstream_endpoint;
    const char *model;   /* extracted from the response, or NULL */
    const char *content; /* extracted assistant text (capped), or NULL */
    size_t content_len;
    int has_usage; /* 0 also when every count was 0: that is no usage reported */
    int64_t prompt_tokens, completion_tokens, total_tokens;
    int has_cached, has_reasoning; /* the usage's subsets were reported */
    int64_t cached_tokens, reasoning_tokens;
    int64_t elapsed_ns, ttfb_ns;
    const char *error; /* NULL on success */
    int client_aborted;
    route_attempt_t *attempts;
    size_t n_attempts;
    int sse;             /* the response was text/event-stream */
    uint64_t bytes_sent; /* response body bytes handed to the client */
} route_res_t;

/* Loads scripts_dir/route.lua, or the embedded default when it is missing. A load error is
 * returned (malloc'd "file:line: message" in *err) and the caller exits. */
hooks_t *hooks_new(route_ctx_t *ctx, const char *scripts_dir, char **err);
void hooks_free(hooks_t *h);
/* Loads the scripts again; on failure the running hooks stay and *err says why. 0 or -1.
 * hooks_reload reads the folder itself (blocking: start-up, tests); the loop calls
 * hooks_reload_snapshot with the files reload.c read on a work thread (it takes snap). */
int hooks_reload(hooks_t *h, char **err);
struct script_snapshot;
int hooks_reload_snapshot(hooks_t *h, struct script_snapshot *snap, char **err);
/* Whether new requests get the default pick_upstream (the C one, which serves `policy`). */
int hooks_pick_is_default(const hooks_t *h);
/* The files the running hooks were loaded from (fingerprints for GET /admin/scripts). */
const struct script_snapshot *hooks_loaded_snapshot(const hooks_t *h);

/* Returns 1 when allowed. When denied (0) or failing (-1), *status and *message (arena
 * string) say what to answer. */
int hooks_authorize(hooks_t *h, route_req_t *req, int *status, const char **message);
/* Fills an arena array of candidates in order. Returns 0, or -1 with *message (500). */
int hooks_pick_upstream(hooks_t *h, route_req_t *req, route_candidate_t **out, size_t *n,
                        const char **message);
/* Runs on_response as an observer of an exchange C has already accounted (records.c): *rec is
 * the row C built, or NULL. The hook may add to the row (res.record.<column> = value) or veto
 * it (return false, or res.record = false): then *rec is freed and set to NULL. So is it when
 * the hook wrote the request's own row itself with route.record{id = req.id, ...} (scripts
 * of the older contract). A hook that raises changes nothing but the row's error (when it had
 * none): "on_response hook: <message>". The caller writes what is left in *rec. */
void hooks_on_response(hooks_t *h, route_req_t *req, const route_res_t *res, store_record_t **rec);

/* The request is over: its Lua object raises when read from now on, and it lets go of the
 * hook table it was pinned to. */
void hooks_release(hooks_t *h, route_req_t *req);

/* Embedded default script (generated from scripts/route.lua at build time). */
extern const char route_lua_embedded[];
extern const size_t route_lua_embedded_len;

#endif
