/* auth.c: the client token list and the Bearer check.
 *
 * Owns: parsing the `authorization` config value into a token list, the one trimming rule,
 * and the constant-time comparison.
 * Must not: read the config store, log a token, or decide what a refusal answers (status and
 * body are the caller's). */
#include "route/auth.h"

#include <stdlib.h>
#include <string.h>

#include "route/util.h"

struct auth_tokens {
    size_t n;
    struct {
        char *text;
        size_t len;
    } items[];
};

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Trims [*s, *s + *n) of ASCII white space on both ends. */
static void trim(const char **s, size_t *n) {
    while (*n && is_ws(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_ws((*s)[*n - 1]))
        (*n)--;
}

auth_tokens_t *auth_tokens_parse(const char *list) {
    size_t commas = 0;
    for (const char *p = list ? list : ""; *p; p++)
        commas += *p == ',';
    auth_tokens_t *t = calloc(1, sizeof *t + (commas + 1) * sizeof t->items[0]);
    if (!t) return NULL;
    const char *p = list ? list : "";
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        trim(&s, &n);
        if (n) {
            char *text = malloc(n + 1);
            if (!text) {
                auth_tokens_free(t);
                return NULL;
            }
            memcpy(text, s, n);
            text[n] = '\0';
            t->items[t->n].text = text;
            t->items[t->n].len = n;
            t->n++;
        }
        if (!end) break;
        p = end + 1;
    }
    return t;
}

void auth_tokens_free(auth_tokens_t *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++)
        free(t->items[i].text);
    free(t);
}

size_t auth_tokens_count(const auth_tokens_t *t) {
    return t ? t->n : 0;
}

const char *auth_tokens_at(const auth_tokens_t *t, size_t i, size_t *len) {
    if (!t || i >= t->n) return NULL;
    if (len) *len = t->items[i].len;
    return t->items[i].text;
}

const char *auth_bearer_token(const char *header, size_t len, size_t *token_len) {
    if (!header || len < 6 || memcmp(header, "Bearer", 6) != 0) return NULL;
    const char *s = header + 6;
    size_t n = len - 6;
    trim(&s, &n);
    *token_len = n;
    return s;
}

static int check_token(const auth_tokens_t *t, const char *token, size_t n) {
    /* Every entry is compared even after a match, so the time taken does not tell which one
     * (or whether an early one) matched. */
    int ok = 0;
    for (size_t i = 0; t && i < t->n; i++)
        ok |= n > 0 && util_secure_equal(token, n, t->items[i].text, t->items[i].len);
    return ok ? AUTH_OK : AUTH_WRONG;
}

int auth_check_bearer(const auth_tokens_t *t, const char *header, size_t len) {
    size_t n = 0;
    const char *token = auth_bearer_token(header, len, &n);
    if (!token) return AUTH_NOT_BEARER;
    return check_token(t, token, n);
}

const char *auth_ws_protocol_token(const char *value, size_t len, size_t *token_len,
                                   size_t *entry_start, size_t *entry_len) {
    static const char prefix[] = AUTH_WS_PROTOCOL_PREFIX;
    const size_t plen = sizeof prefix - 1;
    for (size_t i = 0; value && i < len;) {
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        const char *e = value + start;
        size_t n = i - start;
        trim(&e, &n);
        if (n > plen && memcmp(e, prefix, plen) == 0) {
            *token_len = n - plen;
            if (entry_start) *entry_start = (size_t)(e - value);
            if (entry_len) *entry_len = n;
            return e + plen;
        }
        i++; /* past the comma */
    }
    return NULL;
}

int auth_check_ws_protocol(const auth_tokens_t *t, const char *value, size_t len) {
    size_t n = 0;
    const char *token = auth_ws_protocol_token(value, len, &n, NULL, NULL);
    return token ? check_token(t, token, n) : AUTH_NOT_BEARER;
}

const char *auth_refusal_message(int verdict) {
    return verdict == AUTH_NOT_BEARER ? "authorization header should start with 'Bearer'"
                                      : "wrong authorization header";
}
