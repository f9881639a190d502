/* test_config.c: the typed config table (defaults, bounds, every invalid shape -set must
 * refuse, fallback of a bad stored value with one warning) and the one Bearer rule of auth.c
 * (trimming of the token list and of the header, constant-time match of any entry). */
#include "route/auth.h"
#include "route/config.h"

#include <math.h>
#include <string.h>

#include "testlib.h"

typedef struct kvs {
    const char *const *pairs; /* key, value, ..., NULL */
    int warnings;
    char last_warning[256];
} kvs_t;

static const char *lookup(void *ud, const char *key) {
    kvs_t *k = ud;
    for (const char *const *p = k->pairs; p && *p; p += 2)
        if (strcmp(p[0], key) == 0) return p[1];
    return NULL;
}

static void warn(void *ud, const char *key, const char *message) {
    kvs_t *k = ud;
    (void)key;
    k->warnings++;
    snprintf(k->last_warning, sizeof k->last_warning, "%s", message);
}

static int valid(const char *key, const char *value) {
    char err[256];
    return config_validate(key, value, err, sizeof err) == 0;
}

static void test_defaults_agree_with_the_table(void) {
    route_config_t *parsed = config_parse(NULL, NULL, NULL, NULL);
    const route_config_t *d = config_defaults();
    CHECK(parsed != NULL);
    if (!parsed) return;
    CHECK(d->connect_timeout == parsed->connect_timeout && d->connect_timeout == 10);
    CHECK(d->timeout == parsed->timeout && d->timeout == 600);
    CHECK(d->stream_timeout == parsed->stream_timeout && d->stream_timeout == 30);
    CHECK(d->idle_timeout == parsed->idle_timeout && d->idle_timeout == 120);
    CHECK(d->shutdown_grace == parsed->shutdown_grace && d->shutdown_grace == 30);
    CHECK(d->max_connections == parsed->max_connections && d->max_connections == 10000);
    CHECK(d->hook_instruction_budget == parsed->hook_instruction_budget);
    CHECK(d->hook_memory_limit_mb == parsed->hook_memory_limit_mb);
    CHECK(d->hook_time_limit_ms == parsed->hook_time_limit_ms && d->hook_time_limit_ms == 50);
    CHECK(d->records_queue_max == parsed->records_queue_max && d->records_queue_max == 100000);
    CHECK(d->records_queue_max_mb == parsed->records_queue_max_mb && d->records_queue_max_mb == 64);
    CHECK(d->records_retention_days == parsed->records_retention_days &&
          d->records_retention_days == 0);
    CHECK(d->records_bodies == parsed->records_bodies && d->records_bodies == 1);
    CHECK(d->metrics_public == parsed->metrics_public && d->metrics_public == 0);
    CHECK(strcmp(d->policy, parsed->policy) == 0 && strcmp(d->policy, "main") == 0);
    CHECK(strcmp(d->forward_headers, parsed->forward_headers) == 0);
    CHECK(auth_tokens_count(parsed->tokens) == 0 && auth_tokens_count(d->tokens) == 0);
    config_free(parsed);
}

static void test_validation(void) {
    /* The examples, and their relatives. */
    CHECK(!valid("shutdown_grace", "abc"));
    CHECK(!valid("timeout", "-1"));
    CHECK(!valid("timeout", "NaN"));
    CHECK(!valid("timeout", "nan"));
    CHECK(!valid("timeout", "inf"));
    CHECK(!valid("timeout", "1e400"));
    CHECK(!valid("timeout", "0x10"));
    CHECK(!valid("timeout", "10s"));
    CHECK(!valid("timeout", "100000000"));
    CHECK(!valid("max_connections", "1.5"));
    CHECK(!valid("max_connections", "0"));
    CHECK(!valid("hook_instruction_budget", "lots"));
    CHECK(!valid("metrics_public", "maybe"));
    CHECK(valid("timeout", "0.5"));
    CHECK(valid("timeout", " 600 "));
    CHECK(valid("timeout", "")); /* empty: back to the default */
    CHECK(valid("max_connections", "20000"));
    CHECK(valid("metrics_public", "1") && valid("metrics_public", "true"));
    CHECK(valid("policy", "anything"));        /* the hook decides what policies exist */
    CHECK(valid("weights", "a script's own")); /* unknown keys are the scripts' business */
    char err[256];
    CHECK(config_validate("timeout", "abc", err, sizeof err) == -1);
    CHECK(strstr(err, "timeout") != NULL && strstr(err, "abc") != NULL);
}

static void test_parse_falls_back_per_key(void) {
    static const char *const pairs[] = {
        "timeout", "abc",         "idle_timeout",  "5",   "max_connections", "-3",
        "policy",  "round_robin", "authorization", "a,b", "metrics_public",  "1",
        NULL};
    kvs_t k = {pairs, 0, ""};
    route_config_t *c = config_parse(lookup, &k, warn, &k);
    CHECK(c != NULL);
    if (!c) return;
    CHECK(c->timeout == 600);    /* bad: default */
    CHECK(c->idle_timeout == 5); /* good: taken */
    CHECK(c->max_connections == 10000);
    CHECK(strcmp(c->policy, "round_robin") == 0);
    CHECK(c->metrics_public == 1);
    CHECK(auth_tokens_count(c->tokens) == 2);
    CHECK(k.warnings == 2);
    config_free(c);
}

static int check(const auth_tokens_t *t, const char *header) {
    return auth_check_bearer(t, header, header ? strlen(header) : 0);
}

static void test_bearer_rule(void) {
    auth_tokens_t *t = auth_tokens_parse(" tok-a ,\ttok-b\t,\r\ntok-c\r\n,, ,");
    CHECK(t && auth_tokens_count(t) == 3);
    if (!t) return;
    size_t n = 0;
    CHECK(strcmp(auth_tokens_at(t, 1, &n), "tok-b") == 0 && n == 5);
    CHECK(check(t, "Bearer tok-a") == AUTH_OK);
    CHECK(check(t, "Bearer tok-b") == AUTH_OK);
    CHECK(check(t, "Bearer tok-c") == AUTH_OK);
    CHECK(check(t, "Bearer   tok-c  ") == AUTH_OK);
    CHECK(check(t, "Bearer\ttok-a\t") == AUTH_OK);
    CHECK(check(t, "Bearertok-a") == AUTH_OK); /* the Go program's plain prefix */
    CHECK(check(t, "bearer tok-a") == AUTH_NOT_BEARER);
    CHECK(check(t, "Basic tok-a") == AUTH_NOT_BEARER);
    CHECK(check(t, NULL) == AUTH_NOT_BEARER);
    CHECK(check(t, "Bearer") == AUTH_WRONG);
    CHECK(check(t, "Bearer    ") == AUTH_WRONG);
    CHECK(check(t, "Bearer tok-a,tok-b") == AUTH_WRONG);
    CHECK(check(t, "Bearer tok") == AUTH_WRONG);
    CHECK(check(t, "Bearer TOK-A") == AUTH_WRONG);
    CHECK(check(t, "Bearer tok-a-") == AUTH_WRONG);
    CHECK(strcmp(auth_refusal_message(AUTH_WRONG), "wrong authorization header") == 0);
    auth_tokens_free(t);

    auth_tokens_t *empty = auth_tokens_parse("");
    CHECK(empty && auth_tokens_count(empty) == 0);
    CHECK(check(empty, "Bearer ") == AUTH_WRONG);
    CHECK(check(empty, "Bearer x") == AUTH_WRONG);
    auth_tokens_free(empty);
    CHECK(check(NULL, "Bearer x") == AUTH_WRONG);
}

int main(void) {
    test_defaults_agree_with_the_table();
    test_validation();
    test_parse_falls_back_per_key();
    test_bearer_rule();
    return TEST_DONE();
}
