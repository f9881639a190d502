/* main.c: start-up and shutdown.
 *
 * Owns: the order things start in (flags, one-shot commands, database, first-start token,
 * loop context, hooks, listener), signals (SIGTERM/SIGINT: graceful stop; SIGHUP: reload the
 * scripts), and the orderly end (requests finish within shutdown_grace, every queued record is
 * written, exit 0). Must not: hold request logic; everything per loop lives in route_ctx_t. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/access_log.h"
#include "route/admin.h"
#include "route/cli.h"
#include "route/config.h"
#include "route/ctx.h"
#include "route/hooks.h"
#include "route/metrics.h"
#include "route/proxy.h"
#include "route/reload.h"
#include "route/router.h"
#include "route/server.h"
#include "route/store.h"
#include "route/tls.h"
#include "route/upstream.h"
#include "route/util.h"

typedef struct process {
    route_ctx_t ctx;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer;
    int64_t drain_deadline_ns;
    int stopping;
} process_t;

/* On first start the operator needs a token to call the proxy; it is shown here once and
 * never logged. */
static int ensure_authorization(store_t *store) {
    char *existing = store_config_get(store, "authorization");
    if (existing) {
        free(existing);
        return 0;
    }
    char token[37];
    util_uuid4(token);
    if (store_config_set(store, "authorization", token) != STORE_OK) return -1;
    printf("Generated authorization token (use it as 'Authorization: Bearer <token>'): %s\n",
           token);
    fflush(stdout);
    return 0;
}

static void close_handle(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void stop_now(process_t *pr) {
    route_ctx_t *ctx = &pr->ctx;
    ctx->shutdown_closing = 1;
    store_detach_loop(ctx->store);
    server_close_all(ctx);
    upstream_pool_close_idle(ctx->pool);
    /* What is left (signals, timers, hook handles) closes so uv_run can return. */
    uv_walk(ctx->loop, close_handle, NULL);
}

static void on_drain_tick(uv_timer_t *t) {
    process_t *pr = t->data;
    if (server_active_requests(&pr->ctx) == 0 || util_now_mono_ns() >= pr->drain_deadline_ns) {
        if (server_active_requests(&pr->ctx))
            route_log(LOG_WARN, "shutdown grace over: closing %zu unfinished request(s)",
                      server_active_requests(&pr->ctx));
        stop_now(pr);
    }
}

static void on_stop_signal(uv_signal_t *s, int signum) {
    process_t *pr = s->data;
    route_ctx_t *ctx = &pr->ctx;
    if (pr->stopping) { /* a second signal: the operator does not want to wait */
        stop_now(pr);
        return;
    }
    pr->stopping = 1;
    ctx->shutting_down = 1;
    double grace = config_current(ctx)->shutdown_grace;
    route_log(LOG_INFO, "%s: stopping; %zu request(s) in flight, grace %.0f s",
              signum == SIGINT ? "SIGINT" : "SIGTERM", server_active_requests(ctx), grace);
    server_stop_accepting(ctx);
    upstream_pool_close_idle(ctx->pool);
    pr->drain_deadline_ns = util_now_mono_ns() + (int64_t)(grace * 1e9);
    uv_timer_start(&pr->drain_timer, on_drain_tick, 0, 50);
}

static void on_sighup(uv_signal_t *s, int signum) {
    process_t *pr = s->data;
    reloader_request(pr->ctx.reloader, "SIGHUP", NULL, NULL);
}

int main(int argc, char **argv) {
    const char *level = getenv("ROUTE_LOG_LEVEL");
    if (level) {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        for (int i = 0; i < 4; i++)
            if (strcmp(level, names[i]) == 0) route_log_set_level(i);
    }
    signal(SIGPIPE, SIG_IGN);
    /* libuv's pool runs DNS lookups and admin database work; the default 4 threads would let
     * a few slow admin listings hold up name resolution for proxied requests. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);

    route_options_t opts;
    int rc = cli_parse(argc, argv, &opts, stdout, stderr);
    if (rc == CLI_HELP) return 0;
    if (rc != CLI_OK) return 2;
    route_log_set_json(strcmp(opts.log_format, "json") == 0);
    /* -check reports every problem itself, in one line each: the log lines of what it loads
     * (hooks loaded, a bad config value's warning) would only repeat or bury them. */
    if (opts.check && !level) route_log_set_level(LOG_ERROR);
    rc = cli_run_oneshot(&opts, stdout, stderr);
    if (rc >= 0) return rc;

    char *err = NULL;
    store_t *store = store_open(opts.database, &err);
    if (!store) {
        fprintf(stderr, "cannot open database %s: %s\n", opts.database, err ? err : "?");
        free(err);
        return 1;
    }
    if (ensure_authorization(store) != 0) {
        fprintf(stderr, "cannot store the authorization token in %s\n", opts.database);
        store_close(store);
        return 1;
    }

    process_t pr;
    memset(&pr, 0, sizeof(pr));
    int exit_code = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    route_ctx_t *ctx = &pr.ctx;
    ctx->loop = &loop;
    ctx->opts = &opts;
    ctx->store = store;
    ctx->config = config_state_new();
    ctx->metrics = metrics_new();
    ctx->access_log =
        access_log_new(2, strcmp(opts.log_format, "json") == 0 ? ACCESS_LOG_JSON : ACCESS_LOG_TEXT);
    if (!ctx->access_log) route_log(LOG_WARN, "access log: cannot start its thread; no access log");
    ctx->pool = upstream_pool_new(ctx);
    router_t *router = NULL;
    ctx->tls_client = tls_client_config_new(opts.ca_file, &err);
    if (!ctx->tls_client) {
        /* Without -ca-file a machine with no CA bundle can still proxy to http:// upstreams;
         * an explicit file that does not load is a mistake to stop on. */
        fprintf(stderr, "%s%s\n", err ? err : "cannot set up TLS",
                opts.ca_file ? "" : " (https upstreams will fail)");
        free(err);
        err = NULL;
        if (opts.ca_file) {
            exit_code = 1;
            goto out;
        }
    }
    if (opts.tls_cert) {
        ctx->tls_server = tls_server_config_new(opts.tls_cert, opts.tls_key, &err);
        if (!ctx->tls_server) {
            fprintf(stderr, "%s\n", err ? err : "cannot set up the TLS listener");
            free(err);
            exit_code = 1;
            goto out;
        }
    }
    /* From here on, changes by other processes (-set, -add) reach the loop through this; it
     * also reads what start-up wrote, before the scripts load (they may read route.config). */
    if (store_attach_loop(store, &loop) != 0) {
        fprintf(stderr, "cannot watch %s for changes\n", opts.database);
        exit_code = 1;
        goto out;
    }
    const route_config_t *cfg = config_current(ctx);
    store_loop_set_records_queue_max(store, (size_t)cfg->records_queue_max,
                                     (size_t)cfg->records_queue_max_mb << 20);
    ctx->hooks = hooks_new(ctx, opts.scripts, &err);
    if (!ctx->hooks) {
        fprintf(stderr, "cannot load scripts: %s\n", err ? err : "unknown error");
        free(err);
        exit_code = 1;
        goto out;
    }
    ctx->reloader = reloader_new(ctx, opts.scripts);
    char msg[256];
    router = router_new();
    if (!router || router_add(router, "/v1", ROUTER_PREFIX, proxy_handle) != 0 ||
        router_add(router, "/admin", ROUTER_PREFIX, admin_handle) != 0 ||
        router_add(router, "/metrics", ROUTER_EXACT, metrics_handle) != 0) {
        fprintf(stderr, "out of memory\n");
        exit_code = 1;
        goto out;
    }
    if (server_start(ctx, router, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "%s\n", msg);
        exit_code = 1;
        goto out;
    }
    route_log(LOG_INFO, "openai-api-route listening on %s%s (database %s)", opts.addr,
              ctx->tls_server ? " with TLS" : "", opts.database);

    uv_signal_init(&loop, &pr.sigterm);
    uv_signal_init(&loop, &pr.sigint);
    uv_signal_init(&loop, &pr.sighup);
    uv_timer_init(&loop, &pr.drain_timer);
    pr.sigterm.data = pr.sigint.data = pr.sighup.data = pr.drain_timer.data = &pr;
    uv_signal_start(&pr.sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&pr.sigint, on_stop_signal, SIGINT);
    uv_signal_start(&pr.sighup, on_sighup, SIGHUP);
    uv_run(&loop, UV_RUN_DEFAULT);
    route_log(LOG_INFO, "stopped; writing queued records");

out:
    /* Before the loop closes: the writer must not wake a loop that is gone. */
    store_detach_loop(store);
    if (exit_code) uv_walk(&loop, close_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* completes the closes (the store's async handle too) */
    reloader_free(ctx->reloader);
    if (ctx->hooks) hooks_free(ctx->hooks);
    upstream_pool_free(ctx->pool);
    server_free(ctx);
    router_free(router);
    metrics_free(ctx->metrics);
    access_log_free(ctx->access_log); /* writes what is buffered */
    tls_config_free(ctx->tls_client);
    tls_config_free(ctx->tls_server);
    config_state_free(ctx->config);
    route_ctx_release_caches(ctx);
    uv_loop_close(&loop);
    store_close(store);
    return exit_code;
}
