/* config.h: the typed configuration. One table of keys (name, type, bounds, default) parses the
 * `config_kvs` strings once per change into a route_config_t snapshot; every module reads the
 * struct, never the strings. Keys the table does not know (a script's own, e.g. `weights`)
 * stay readable as strings through route.config.get. */
#ifndef ROUTE_CONFIG_H
#define ROUTE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "route/auth.h"

typedef struct route_config {
    /* Timeouts, seconds. */
    double connect_timeout; /* 10 */
    double timeout;         /* 600: to response headers */
    double stream_timeout;  /* 30: to response headers for "stream": true */
    double idle_timeout;    /* 120: between body bytes */
    double send_timeout;    /* 60: a client taking no response bytes is closed (0: never) */
    double shutdown_grace;  /* 30 */
    int64_t max_connections;
    int max_connections_set; /* 0: the default, which the listener fits to the fd limit */
    /* Hooks: budgets per top-level call. */
    int64_t hook_instruction_budget;
    int64_t hook_memory_limit_mb;
    double hook_time_limit_ms;
    /* Records. */
    int64_t records_queue_max;
    int64_t records_queue_max_mb;
    int64_t records_retention_days; /* 0: keep every row */
    int records_bodies;             /* 1: the request body and the response text go in the row */
    int metrics_public;
    int access_log; /* 1: one line per request on stderr */
    /* 1: a stream to chat/completions or completions asks the upstream for its usage chunk
     * (stream_options.include_usage), recorded and kept from the client that did not ask */
    int force_stream_usage;
    const char *policy;          /* "main" */
    const auth_tokens_t *tokens; /* parsed `authorization` */
    const char *forward_headers; /* comma-separated extra request headers, "" for none */
} route_config_t;

/* The compiled-in defaults (never NULL). */
const route_config_t *config_defaults(void);

/* Checks one value as -set would write it. Unknown keys are accepted. Returns 0, or -1 with a
 * message ("timeout: not a number of seconds: abc") in err. */
int config_validate(const char *key, const char *value, char *err, size_t err_cap);

/* Builds a snapshot from a lookup of the stored strings (get returns NULL for a missing key).
 * An invalid stored value falls back to its default; *bad (may be NULL) receives a message for
 * each, through warn, so the caller can log it once. NULL only when out of memory. */
typedef const char *(*config_lookup_fn)(void *ud, const char *key);
typedef void (*config_warn_fn)(void *ud, const char *key, const char *message);
route_config_t *config_parse(config_lookup_fn get, void *ud, config_warn_fn warn, void *warn_ud);
void config_free(route_config_t *c);

/* The loop's current snapshot: re-parsed from the store's cache when its config generation
 * changed, else the same pointer (valid until the next call that re-parses). */
struct route_ctx;
typedef struct config_state config_state_t;
config_state_t *config_state_new(void);
void config_state_free(config_state_t *s);
const route_config_t *config_current(struct route_ctx *ctx);

#endif
