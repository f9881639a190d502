/* fuzz_config.c: libFuzzer target for the typed configuration (config.c). The input is a list
 * of "key=value" lines (a line without '=' is a key with an empty value; a later line for the
 * same key wins, as the store keeps one value per key). Whatever it holds:
 *   - config_validate accepts or refuses each pair with a message, and accepts every key the
 *     table does not know;
 *   - config_parse over the pairs builds a snapshot in which a key whose value validates holds
 *     that value (numbers as strtod reads them), and a key whose value does not is warned about
 *     exactly once and holds its default; strings are copied whole; the token list is what
 *     auth_tokens_parse makes of `authorization`;
 *   - every accepted token passes auth_check_bearer as "Bearer <token>", and the input's last
 *     line as a header gets a verdict without a crash. */
#include "route/config.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route/auth.h"
#include "fuzz_input.h"

#define MAX_PAIRS 32

typedef struct pairs {
    char *key[MAX_PAIRS], *value[MAX_PAIRS];
    size_t n;
    unsigned warned[MAX_PAIRS]; /* warnings per key (index of its last pair) */
} pairs_t;

/* The last pair with that key, as the store would return it. */
static int find(const pairs_t *p, const char *key) {
    for (size_t i = p->n; i-- > 0;)
        if (strcmp(p->key[i], key) == 0) return (int)i;
    return -1;
}

static const char *lookup(void *ud, const char *key) {
    const pairs_t *p = ud;
    int i = find(p, key);
    return i < 0 ? NULL : p->value[i];
}

static void warn(void *ud, const char *key, const char *message) {
    pairs_t *p = ud;
    int i = find(p, key);
    if (i < 0 || !message || !*message) abort(); /* a warning for a value nobody stored */
    p->warned[i]++;
}

/* The snapshot's fields by key: what the fuzzer checks against config_validate. */
enum kind { K_DOUBLE, K_INT64, K_BOOL };
static const struct field {
    const char *name;
    enum kind kind;
    size_t off;
} fields[] = {
    {"connect_timeout", K_DOUBLE, offsetof(route_config_t, connect_timeout)},
    {"timeout", K_DOUBLE, offsetof(route_config_t, timeout)},
    {"stream_timeout", K_DOUBLE, offsetof(route_config_t, stream_timeout)},
    {"idle_timeout", K_DOUBLE, offsetof(route_config_t, idle_timeout)},
    {"shutdown_grace", K_DOUBLE, offsetof(route_config_t, shutdown_grace)},
    {"max_connections", K_INT64, offsetof(route_config_t, max_connections)},
    {"hook_instruction_budget", K_INT64, offsetof(route_config_t, hook_instruction_budget)},
    {"hook_memory_limit_mb", K_INT64, offsetof(route_config_t, hook_memory_limit_mb)},
    {"hook_time_limit_ms", K_DOUBLE, offsetof(route_config_t, hook_time_limit_ms)},
    {"records_queue_max", K_INT64, offsetof(route_config_t, records_queue_max)},
    {"records_queue_max_mb", K_INT64, offsetof(route_config_t, records_queue_max_mb)},
    {"metrics_public", K_BOOL, offsetof(route_config_t, metrics_public)},
};

static double field_value(const route_config_t *c, const struct field *f) {
    const char *p = (const char *)c + f->off;
    switch (f->kind) {
    case K_DOUBLE:
        return *(const double *)(const void *)p;
    case K_INT64:
        return (double)*(const int64_t *)(const void *)p;
    default:
        return *(const int *)(const void *)p;
    }
}

static int is_truthy(const char *v) {
    return !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on");
}

static void check_header(const auth_tokens_t *t, const char *h, size_t n) {
    int v = auth_check_bearer(t, h, n);
    if (v != AUTH_OK && v != AUTH_NOT_BEARER && v != AUTH_WRONG) abort();
    if (!auth_refusal_message(v)) abort();
    size_t tl;
    const char *tok = auth_bearer_token(h, n, &tl);
    if (!tok != (v == AUTH_NOT_BEARER)) abort();
    if (tok && (tok < h || tok + tl > h + n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 8192) return 0;
    char *text = fuzz_text(data, size);
    pairs_t p = {0};
    char *last_line = text;
    for (char *line = text; line && p.n < MAX_PAIRS;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        last_line = line;
        char *eq = strchr(line, '=');
        p.key[p.n] = strndup(line, eq ? (size_t)(eq - line) : strlen(line));
        p.value[p.n] = strdup(eq ? eq + 1 : "");
        if (!p.key[p.n] || !p.value[p.n]) abort();
        p.n++;
        line = nl ? nl + 1 : NULL;
    }

    int valid[MAX_PAIRS];
    for (size_t i = 0; i < p.n; i++) {
        char err[256];
        err[0] = '\0';
        int rc = config_validate(p.key[i], p.value[i], err, sizeof err);
        if (rc != 0 && rc != -1) abort();
        if (rc != 0 && (!err[0] || !memchr(err, '\0', sizeof err))) abort();
        valid[i] = rc == 0;
    }

    route_config_t *c = config_parse(lookup, &p, warn, &p);
    if (!c) abort();
    const route_config_t *d = config_defaults();
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        const struct field *f = &fields[k];
        int i = find(&p, f->name);
        double got = field_value(c, f), dflt = field_value(d, f);
        if (i < 0 || !*p.value[i]) { /* missing or empty: the default, no warning */
            if (got != dflt || (i >= 0 && p.warned[i])) abort();
            continue;
        }
        if (!valid[i]) {
            if (got != dflt || p.warned[i] != 1) abort();
            continue;
        }
        if (p.warned[i]) abort();
        double want = f->kind == K_BOOL ? is_truthy(p.value[i]) : strtod(p.value[i], NULL);
        if (!isfinite(got) || got != want) abort();
    }
    /* Warnings only for known keys' last values. */
    for (size_t i = 0; i < p.n; i++)
        if (p.warned[i] && find(&p, p.key[i]) != (int)i) abort();

    int pi = find(&p, "policy");
    const char *policy = pi >= 0 && *p.value[pi] ? p.value[pi] : "main";
    if (!c->policy || strcmp(c->policy, policy) != 0) abort();
    int fi = find(&p, "forward_headers");
    if (!c->forward_headers || strcmp(c->forward_headers, fi >= 0 ? p.value[fi] : "") != 0) abort();

    int ai = find(&p, "authorization");
    auth_tokens_t *ref = auth_tokens_parse(ai >= 0 ? p.value[ai] : "");
    if (!ref || !c->tokens) abort();
    size_t n = auth_tokens_count(c->tokens);
    if (n != auth_tokens_count(ref)) abort();
    for (size_t i = 0; i < n; i++) {
        size_t l1, l2;
        const char *t1 = auth_tokens_at(c->tokens, i, &l1), *t2 = auth_tokens_at(ref, i, &l2);
        if (!t1 || !t2 || l1 != l2 || memcmp(t1, t2, l1) != 0 || l1 == 0) abort();
        char hdr[8200];
        if (l1 + 8 > sizeof hdr) continue;
        memcpy(hdr, "Bearer ", 7);
        memcpy(hdr + 7, t1, l1);
        if (auth_check_bearer(c->tokens, hdr, l1 + 7) != AUTH_OK) abort();
        check_header(c->tokens, hdr, l1 + 7);
    }
    if (auth_tokens_at(c->tokens, n, NULL)) abort();
    check_header(c->tokens, last_line, strlen(last_line));
    check_header(c->tokens, NULL, 0);
    auth_tokens_free(ref);
    config_free(c);

    for (size_t i = 0; i < p.n; i++) {
        free(p.key[i]);
        free(p.value[i]);
    }
    free(text);
    return 0;
}
