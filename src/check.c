/* check.c: -check, the `nginx -t` of this program: would a start (or a SIGHUP) with these flags,
 * scripts and database work? It loads the scripts as the server would (over the embedded
 * defaults, with the database's config and upstreams visible to code that runs at load), reads
 * every stored config value through the typed table, and loads the TLS files and the listen
 * address the flags name. Every problem is printed (a script error with its file and line);
 * exit 1 when there was one, else one line on stdout and exit 0.
 *
 * The database is opened read-only and never created or migrated: a check changes nothing, so
 * it is safe beside a running server. A missing file is no error (the start creates it): the
 * OK line says so, and the scripts load against an empty database made in a temporary folder
 * and removed after, as they would against the one the start creates (route.config.set at
 * load works).
 *
 * Owns: what -check verifies and how it reports. Must not: write to the -database file, bind the
 * listen address, or print a token or a key (problems name the key, config.c's message quotes a
 * value only for typed keys, never `authorization`). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route/cli.h"
#include "route/config.h"
#include "route/ctx.h"
#include "route/hooks.h"
#include "route/lua_api.h"
#include "route/store.h"
#include "route/tls.h"
#include "route/upstream.h"

typedef struct check {
    FILE *err;
    const char *database;
    int problems;
    int keys; /* config keys read */
} check_t;

static void problem(check_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(check_t *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("check: ", c->err);
    vfprintf(c->err, fmt, ap);
    fputc('\n', c->err);
    va_end(ap);
    c->problems++;
}

static void check_config_value(void *ud, const char *key, const char *value) {
    check_t *c = ud;
    char why[256];
    c->keys++;
    if (config_validate(key, value, why, sizeof why) != 0)
        problem(c, "%s: config_kvs: %s", c->database, why);
}

static void check_tls(check_t *c, const route_options_t *opts, tls_config_t **client) {
    char *err = NULL;
    if (opts->ca_file && !(*client = tls_client_config_new(opts->ca_file, &err)))
        problem(c, "-ca-file %s: %s", opts->ca_file, err ? err : "cannot load");
    free(err);
    err = NULL;
    if (opts->tls_cert) {
        tls_config_t *server = tls_server_config_new(opts->tls_cert, opts->tls_key, &err);
        if (!server) problem(c, "-tls-cert/-tls-key: %s", err ? err : "cannot load");
        tls_config_free(server);
        free(err);
    }
}

/* The store for the hooks to see, or NULL (no file yet, or unreadable: reported). */
static store_t *check_database(check_t *c, int *missing) {
    struct stat st;
    *missing = 0;
    if (stat(c->database, &st) != 0) {
        if (errno == ENOENT) {
            *missing = 1;
            return NULL;
        }
        problem(c, "database %s: %s", c->database, strerror(errno));
        return NULL;
    }
    char *err = NULL;
    store_t *s = store_open_readonly(c->database, &err);
    if (!s) {
        problem(c, "database %s: %s", c->database, err ? err : "cannot open");
        free(err);
        return NULL;
    }
    if (store_config_each(s, check_config_value, c) != STORE_OK)
        problem(c, "database %s: cannot read config_kvs", c->database);
    return s;
}

/* The empty database a start would create, in a folder of its own under $TMPDIR: NULL when
 * it cannot be made (the scripts then load with no database, as before). */
static const char *const SCRATCH_FILES[] = {"db.sqlite-wal", "db.sqlite-shm", "db.sqlite"};

static store_t *scratch_store(char *dir, size_t cap) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, cap, "%s/route-check-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        dir[0] = '\0';
        return NULL;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/db.sqlite", dir);
    char *err = NULL;
    store_t *s = store_open(path, &err);
    free(err);
    return s;
}

static void scratch_remove(const char *dir) {
    if (!dir[0]) return;
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof SCRATCH_FILES / sizeof SCRATCH_FILES[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, SCRATCH_FILES[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void close_handle(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Loads the hooks as main does, on a loop of their own (route.http_post at load has a pool to
 * use), then takes it all down. *script says which file was loaded. */
static void check_scripts(check_t *c, const route_options_t *opts, store_t *store,
                          tls_config_t *tls_client, char *script, size_t cap) {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        problem(c, "cannot set up an event loop");
        return;
    }
    route_ctx_t ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.loop = &loop;
    ctx.opts = opts;
    ctx.store = store;
    ctx.tls_client = tls_client;
    ctx.config = config_state_new();
    ctx.pool = upstream_pool_new(&ctx);
    char *err = NULL;
    hooks_t *h = ctx.config && ctx.pool ? hooks_new(&ctx, opts->scripts, &err) : NULL;
    struct stat st;
    snprintf(script, cap, "%s/route.lua", opts->scripts ? opts->scripts : ".");
    if (!opts->scripts || stat(script, &st) != 0)
        snprintf(script, cap, "the embedded route.lua (no %s/route.lua)",
                 opts->scripts ? opts->scripts : ".");
    if (!h) problem(c, "scripts: %s", err ? err : "out of memory");
    /* The policy names the default pick_upstream's choice; with a script's own pick_upstream
     * it means whatever the script makes of it. */
    const char *policy = store ? store_loop_config(store, "policy") : NULL;
    if (h && hooks_pick_is_default(h) && !default_policy_known(policy))
        problem(c,
                "%s: config_kvs: policy: unknown load balance policy '%s' (every request "
                "would get a 500)",
                c->database, policy);
    free(err);
    hooks_free(h);
    /* What a script started at load (a route.http_post) ends by itself, within its timeout:
     * closing its handles under it would close them twice. Then the idle connections go. */
    do
        upstream_pool_close_idle(ctx.pool);
    while (uv_run(&loop, UV_RUN_ONCE));
    uv_walk(&loop, close_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    upstream_pool_free(ctx.pool);
    config_state_free(ctx.config);
    route_ctx_release_caches(&ctx);
    uv_loop_close(&loop);
}

int cli_run_check(const route_options_t *opts, FILE *out, FILE *err) {
    check_t c = {.err = err, .database = opts->database};
    char host[256], script[1200];
    int port;
    if (cli_split_addr(opts->addr, host, sizeof host, &port) != 0)
        problem(&c, "-addr %s: not host:port, :port or [::1]:port", opts->addr);
    tls_config_t *tls_client = NULL;
    check_tls(&c, opts, &tls_client);
    int missing;
    char scratch[PATH_MAX] = "";
    store_t *store = check_database(&c, &missing);
    if (missing) store = scratch_store(scratch, sizeof scratch);
    check_scripts(&c, opts, store, tls_client, script, sizeof script);
    store_close(store);
    scratch_remove(scratch);
    tls_config_free(tls_client);
    if (c.problems) {
        fprintf(err, "check failed: %d problem(s)\n", c.problems);
        return 1;
    }
    if (missing)
        fprintf(out,
                "check ok: scripts %s; database %s does not exist yet (the start creates it)\n",
                script, opts->database);
    else
        fprintf(out, "check ok: scripts %s; database %s, %d config key(s) valid\n", script,
                opts->database, c.keys);
    return 0;
}
