/* ctx.h: the per-event-loop context. Everything mutable lives here or below it, never in a
 * global, so several loops (one per core) can run side by side later. */
#ifndef ROUTE_CTX_H
#define ROUTE_CTX_H

#include <stdint.h>
#include <uv.h>

#include "route/cli.h"
#include "route/extract.h"
#include "route/util.h"

typedef struct store store_t;
typedef struct hooks hooks_t;
typedef struct server server_t;
typedef struct upstream_pool upstream_pool_t;
typedef struct tls_config tls_config_t;
typedef struct metrics metrics_t;
typedef struct access_log access_log_t;
typedef struct reloader reloader_t;
typedef struct config_state config_state_t;
typedef struct upstream_url_cache upstream_url_cache_t;

typedef struct route_ctx {
    uv_loop_t *loop;
    const route_options_t *opts;
    store_t *store;
    hooks_t *hooks;
    server_t *server;
    upstream_pool_t *pool;
    tls_config_t *tls_client; /* upstream verification; NULL when it could not load */
    tls_config_t *tls_server; /* the HTTPS listener's, or NULL */
    metrics_t *metrics;
    access_log_t *access_log; /* NULL: no access log */
    reloader_t *reloader;
    config_state_t *config; /* the typed snapshot: read it through config_current(ctx) */
    int shutting_down;
    int shutdown_closing; /* the shutdown grace is over: what closes now, the shutdown closes */

    /* Per-loop recycling, so a request in steady state costs no malloc or syscall for these
     * (loop thread only; route_ctx_release_caches frees them at exit). */
    util_rng_t rng;                  /* request ids */
    arena_pool_t arena_pool;         /* blocks of request and upstream response arenas */
    extract_pool_t extract_pool;     /* response extractors */
    upstream_url_cache_t *url_cache; /* parsed endpoint URLs (upstream_url_get) */
    buf_t scratch; /* a loop-thread scratch buffer: its user empties it and is done with it
                      before calling anything else that may use it */
} route_ctx_t;

/* Frees what the per-loop recycling above holds; after every request has ended. */
void route_ctx_release_caches(route_ctx_t *ctx);

#endif
