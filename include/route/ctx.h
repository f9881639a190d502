/* ctx.h: the per-event-loop context. Everything mutable lives here or below it, never in a
 * global, so several loops (one per core) can run side by side later. */
#ifndef ROUTE_CTX_H
#define ROUTE_CTX_H

#include <stdint.h>
#include <uv.h>

#include "route/cli.h"

typedef struct store store_t;
typedef struct hooks hooks_t;
typedef struct server server_t;
typedef struct upstream_pool upstream_pool_t;
typedef struct tls_config tls_config_t;
typedef struct metrics metrics_t;
typedef struct reloader reloader_t;
typedef struct config_state config_state_t;

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
    reloader_t *reloader;
    config_state_t *config; /* the typed snapshot: read it through config_current(ctx) */
    int shutting_down;
} route_ctx_t;

#endif
