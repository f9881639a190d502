/* lua_redact.c: secrets out of text a script produced.
 *
 * Owns: replacing every upstream key, configured client token and the current request's own
 * bearer token with "***" in error messages and log lines that carry script text.
 * Must not: log, allocate inside the Lua state, or parse the token list itself (auth.h and
 * the typed config hold the one parsed list). */
#include <stdlib.h>
#include <string.h>

#include "route/auth.h"
#include "route/config.h"
#include "route/lua_api.h"
#include "route/store.h"

typedef struct redact_buf {
    char *p;
    size_t len;
} redact_buf_t;

/* Replaces every occurrence of secret in *b. Returns -1 when out of memory. */
static int redact_one(redact_buf_t *b, const char *secret, size_t slen) {
    static const char mask[] = "***";
    /* Short strings would blank out ordinary words; "asis" is a mode, not a key. */
    if (slen < 4 || (slen == 4 && memcmp(secret, "asis", 4) == 0)) return 0;
    if (b->len < slen) return 0;
    size_t hits = 0;
    for (size_t i = 0; i + slen <= b->len;) {
        if (memcmp(b->p + i, secret, slen) == 0) {
            hits++;
            i += slen;
        } else {
            i++;
        }
    }
    if (!hits) return 0;
    size_t nlen = b->len - hits * slen + hits * (sizeof mask - 1);
    char *out = malloc(nlen + 1);
    if (!out) return -1;
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        if (i + slen <= b->len && memcmp(b->p + i, secret, slen) == 0) {
            memcpy(out + o, mask, sizeof mask - 1);
            o += sizeof mask - 1;
            i += slen;
        } else {
            out[o++] = b->p[i++];
        }
    }
    out[o] = '\0';
    free(b->p);
    b->p = out;
    b->len = o;
    return 0;
}

char *lua_api_redact(const lua_api_host_t *host, const char *msg, size_t len) {
    redact_buf_t b = {malloc(len + 1), len};
    if (!b.p) return NULL;
    memcpy(b.p, msg, len);
    b.p[len] = '\0';

    route_ctx_t *ctx = host ? host->ctx : NULL;
    store_t *s = ctx ? ctx->store : NULL;
    if (s) {
        const store_upstream_list_t *l = store_loop_upstreams(s);
        for (size_t i = 0; l && i < l->n; i++) {
            const char *sk = l->items[i].sk;
            if (sk && redact_one(&b, sk, strlen(sk)) < 0) goto oom;
        }
    }
    if (ctx) {
        const auth_tokens_t *t = config_current(ctx)->tokens;
        size_t n = 0;
        const char *tok;
        for (size_t i = 0; (tok = auth_tokens_at(t, i, &n)) != NULL; i++)
            if (redact_one(&b, tok, n) < 0) goto oom;
    }
    if (host && host->req && host->req->http) {
        const route_header_t *auth = http_request_header(host->req->http, "authorization");
        size_t n = 0;
        const char *tok =
            auth && auth->value ? auth_bearer_token(auth->value, auth->value_len, &n) : NULL;
        if (!tok && auth && auth->value) {
            tok = auth->value; /* not Bearer: the whole value may still be a secret */
            n = auth->value_len;
        }
        if (tok && redact_one(&b, tok, n) < 0) goto oom;
    }
    return b.p;
oom:
    free(b.p);
    return NULL;
}
