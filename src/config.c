/* config.c: the typed configuration table and the loop's current snapshot.
 *
 * Owns: the list of known keys with their type, bounds and default; parsing the stored strings
 * into a route_config_t; the validation -set runs; logging a bad stored value once.
 * Must not: touch SQLite (the strings come from the store's loop cache), log a token or a
 * value of `authorization`, or be parsed per request (a snapshot is rebuilt only when the
 * store's config generation changed). */
#include "route/config.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/ctx.h"
#include "route/store.h"
#include "route/util.h"

enum key_type { T_SECONDS, T_MILLIS, T_INT, T_BOOL, T_STRING, T_TOKENS };

typedef struct key_spec {
    const char *name;
    enum key_type type;
    size_t offset;
    double min, max; /* inclusive bounds for numbers */
    double dflt;     /* numbers and bools */
    const char *dflt_text;
} key_spec_t;

#define OFF(f) offsetof(route_config_t, f)
#define DAY    86400.0

static const key_spec_t keys[] = {
    {"connect_timeout", T_SECONDS, OFF(connect_timeout), 0, DAY, 10, NULL},
    {"timeout", T_SECONDS, OFF(timeout), 0, DAY, 600, NULL},
    {"stream_timeout", T_SECONDS, OFF(stream_timeout), 0, DAY, 30, NULL},
    {"idle_timeout", T_SECONDS, OFF(idle_timeout), 0, DAY, 120, NULL},
    {"send_timeout", T_SECONDS, OFF(send_timeout), 0, DAY, 60, NULL},
    {"shutdown_grace", T_SECONDS, OFF(shutdown_grace), 0, DAY, 30, NULL},
    {"max_connections", T_INT, OFF(max_connections), 1, 10000000, 10000, NULL},
    {"hook_instruction_budget", T_INT, OFF(hook_instruction_budget), 1000, 1e15, 10000000, NULL},
    {"hook_memory_limit_mb", T_INT, OFF(hook_memory_limit_mb), 1, 1048576, 256, NULL},
    {"hook_time_limit_ms", T_MILLIS, OFF(hook_time_limit_ms), 1, 3600000, 50, NULL},
    {"records_queue_max", T_INT, OFF(records_queue_max), 1, 100000000, 100000, NULL},
    {"records_queue_max_mb", T_INT, OFF(records_queue_max_mb), 1, 1048576, 64, NULL},
    {"records_retention_days", T_INT, OFF(records_retention_days), 0, 36500, 0, NULL},
    {"records_bodies", T_BOOL, OFF(records_bodies), 0, 1, 1, NULL},
    {"metrics_public", T_BOOL, OFF(metrics_public), 0, 1, 0, NULL},
    {"access_log", T_BOOL, OFF(access_log), 0, 1, 1, NULL},
    {"force_stream_usage", T_BOOL, OFF(force_stream_usage), 0, 1, 1, NULL},
    {"policy", T_STRING, OFF(policy), 0, 0, 0, "main"},
    {"authorization", T_TOKENS, OFF(tokens), 0, 0, 0, ""},
    {"forward_headers", T_STRING, OFF(forward_headers), 0, 0, 0, ""},
};
#define N_KEYS (sizeof keys / sizeof keys[0])

static const key_spec_t *find_key(const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

static int parse_number(const key_spec_t *k, const char *v, double *out, char *err, size_t cap) {
    const char *unit = k->type == T_SECONDS  ? "a number of seconds"
                       : k->type == T_MILLIS ? "a number of milliseconds"
                                             : "a whole number";
    while (*v == ' ' || *v == '\t')
        v++;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    while (end && (*end == ' ' || *end == '\t'))
        end++;
    /* strtod takes "nan", "inf" and hex floats: none is a sensible duration or count. */
    int hexlike = strpbrk(v, "xXpP") != NULL;
    if (end == v || *end || errno == ERANGE || !isfinite(d) || hexlike) {
        snprintf(err, cap, "%s: not %s: '%s'", k->name, unit, v);
        return -1;
    }
    if (k->type == T_INT && d != floor(d)) {
        snprintf(err, cap, "%s: not %s: '%s'", k->name, unit, v);
        return -1;
    }
    if (d < k->min || d > k->max) {
        snprintf(err, cap, "%s: %s is out of range (%g to %g)", k->name, v, k->min, k->max);
        return -1;
    }
    *out = d;
    return 0;
}

static int parse_bool(const key_spec_t *k, const char *v, int *out, char *err, size_t cap) {
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off", ""};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (strcmp(v, yes[i]) == 0) return *out = 1, 0;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (strcmp(v, no[i]) == 0) return *out = 0, 0;
    snprintf(err, cap, "%s: not a boolean (1/0, true/false): '%s'", k->name, v);
    return -1;
}

static int check_value(const key_spec_t *k, const char *v, char *err, size_t cap) {
    double d;
    int b;
    switch (k->type) {
    case T_SECONDS:
    case T_MILLIS:
    case T_INT:
        return parse_number(k, v, &d, err, cap);
    case T_BOOL:
        return parse_bool(k, v, &b, err, cap);
    default:
        return 0;
    }
}

int config_validate(const char *key, const char *value, char *err, size_t err_cap) {
    const key_spec_t *k = find_key(key);
    /* An empty value means "the default", as a missing key does. */
    if (!k || !value || !*value) return 0;
    return check_value(k, value, err, err_cap);
}

/* Strings of a snapshot live in one block with it, so config_free is one free plus the
 * token list. */
typedef struct config_block {
    route_config_t cfg;
    auth_tokens_t *tokens;
    char strings[];
} config_block_t;

static void set_number(route_config_t *c, const key_spec_t *k, double d) {
    char *p = (char *)c + k->offset;
    if (k->type == T_INT)
        *(int64_t *)(void *)p = (int64_t)d;
    else if (k->type == T_BOOL)
        *(int *)(void *)p = (int)d;
    else
        *(double *)(void *)p = d;
}

static const char *stored_or_default(const key_spec_t *k, config_lookup_fn get, void *ud,
                                     config_warn_fn warn, void *warn_ud) {
    const char *v = get ? get(ud, k->name) : NULL;
    if (!v || !*v) return NULL;
    char err[256];
    if (check_value(k, v, err, sizeof err) == 0) return v;
    if (warn) warn(warn_ud, k->name, err);
    return NULL;
}

route_config_t *config_parse(config_lookup_fn get, void *ud, config_warn_fn warn, void *warn_ud) {
    const char *texts[N_KEYS] = {0};
    size_t total = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type != T_STRING && keys[i].type != T_TOKENS) continue;
        const char *v = get ? get(ud, keys[i].name) : NULL;
        texts[i] = v && *v ? v : keys[i].dflt_text;
        total += strlen(texts[i]) + 1;
    }
    config_block_t *blk = calloc(1, sizeof *blk + total);
    if (!blk) return NULL;
    route_config_t *c = &blk->cfg;
    char *w = blk->strings;
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_spec_t *k = &keys[i];
        if (k->type == T_STRING) {
            size_t n = strlen(texts[i]) + 1;
            memcpy(w, texts[i], n);
            *(const char **)(void *)((char *)c + k->offset) = w;
            w += n;
            continue;
        }
        if (k->type == T_TOKENS) {
            blk->tokens = auth_tokens_parse(texts[i]);
            if (!blk->tokens) {
                free(blk);
                return NULL;
            }
            c->tokens = blk->tokens;
            continue;
        }
        const char *v = stored_or_default(k, get, ud, warn, warn_ud);
        double d = k->dflt;
        /* stored_or_default has checked v already; the message is not used here. */
        char err[256];
        if (v) {
            if (k->type == T_BOOL) {
                int b = 0;
                parse_bool(k, v, &b, err, sizeof err);
                d = b;
            } else {
                parse_number(k, v, &d, err, sizeof err);
            }
        }
        set_number(c, k, d);
        if (v && k->offset == OFF(max_connections)) c->max_connections_set = 1;
    }
    return c;
}

void config_free(route_config_t *c) {
    if (!c) return;
    config_block_t *blk = (config_block_t *)(void *)c;
    auth_tokens_free(blk->tokens);
    free(blk);
}

/* The table's defaults as a constant (tests/unit/test_config.c checks that the two agree), so
 * code without a loop (the CLI, tests) needs no allocation and no mutable global. */
static const route_config_t compiled_defaults = {
    .connect_timeout = 10,
    .timeout = 600,
    .stream_timeout = 30,
    .idle_timeout = 120,
    .send_timeout = 60,
    .shutdown_grace = 30,
    .max_connections = 10000,
    .hook_instruction_budget = 10000000,
    .hook_memory_limit_mb = 256,
    .hook_time_limit_ms = 50,
    .records_queue_max = 100000,
    .records_queue_max_mb = 64,
    .records_retention_days = 0,
    .records_bodies = 1,
    .metrics_public = 0,
    .access_log = 1,
    .force_stream_usage = 1,
    .policy = "main",
    .tokens = NULL, /* accepts nothing */
    .forward_headers = "",
};

const route_config_t *config_defaults(void) {
    return &compiled_defaults;
}

/* ---- the loop's snapshot ---- */

struct config_state {
    route_config_t *current;
    uint64_t generation;
    int valid;
    /* The bad value last logged per key, so each is logged once, not once per re-parse. */
    char *logged_bad[N_KEYS];
};

config_state_t *config_state_new(void) {
    return calloc(1, sizeof(config_state_t));
}

void config_state_free(config_state_t *s) {
    if (!s) return;
    config_free(s->current);
    for (size_t i = 0; i < N_KEYS; i++)
        free(s->logged_bad[i]);
    free(s);
}

typedef struct parse_env {
    config_state_t *state;
    store_t *store;
} parse_env_t;

static const char *lookup_store(void *ud, const char *key) {
    parse_env_t *env = ud;
    return env->store ? store_loop_config(env->store, key) : NULL;
}

static void warn_once(void *ud, const char *key, const char *message) {
    parse_env_t *env = ud;
    const key_spec_t *k = find_key(key);
    size_t i = (size_t)(k - keys);
    const char *v = lookup_store(ud, key);
    if (env->state->logged_bad[i] && v && strcmp(env->state->logged_bad[i], v) == 0) return;
    free(env->state->logged_bad[i]);
    env->state->logged_bad[i] = v ? strdup(v) : NULL;
    route_log(LOG_WARN, "config: %s; using the default", message);
}

const route_config_t *config_current(struct route_ctx *ctx) {
    config_state_t *s = ctx ? ctx->config : NULL;
    if (!s) return config_defaults();
    uint64_t gen = ctx->store ? store_loop_config_generation(ctx->store) : 0;
    if (s->valid && gen == s->generation) return s->current;
    parse_env_t env = {s, ctx->store};
    route_config_t *c = config_parse(lookup_store, &env, warn_once, &env);
    if (!c) { /* out of memory: keep the last good snapshot */
        route_log(LOG_ERROR, "config: out of memory, keeping the previous configuration");
        return s->current ? s->current : config_defaults();
    }
    config_free(s->current);
    s->current = c;
    s->generation = gen;
    s->valid = 1;
    /* The store may not read config itself (no config.h there): a changed bound applies now. */
    if (ctx->store)
        store_loop_set_records_queue_max(ctx->store, (size_t)c->records_queue_max,
                                         (size_t)c->records_queue_max_mb << 20);
    if (ctx->store) store_loop_set_records_retention(ctx->store, c->records_retention_days);
    return c;
}
