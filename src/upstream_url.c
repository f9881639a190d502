/* upstream_url.c: upstream endpoint URLs.
 *
 * Owns: parsing "http(s)://host[:port][/path]" into scheme, host (IPv6 without brackets),
 * port, base path and the Host header value, and the per-loop cache of parsed endpoints
 * (refcounted entries, dropped when the upstreams generation moves).
 * Must not: resolve names or open connections; upstream_parse_url allocates only in the
 * caller's arena. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route/upstream.h"
#include "route/store.h"

int upstream_parse_url(arena_t *arena, const char *url, upstream_url_t *out, const char **why) {
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
        out->port = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        out->tls = 1;
        out->port = 443;
    } else {
        *why = "endpoint must start with http:// or https://";
        return -1;
    }
    const char *host_end, *host_start = p;
    /* The authority ends at the path, the query or the fragment: a key in an endpoint's query
     * (https://host?api-key=...) must never become part of the host, which errors and logs
     * name. */
    const char *auth_end = p + strcspn(p, "/?#");
    if (memchr(p, '@', (size_t)(auth_end - p))) {
        *why = "user info in endpoint URLs is not supported";
        return -1;
    }
    const char *port_sep = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(auth_end - p));
        if (!rb) {
            *why = "bad IPv6 address in endpoint";
            return -1;
        }
        host_start = p + 1;
        host_end = rb;
        if (rb + 1 < auth_end) {
            if (rb[1] != ':') {
                *why = "bad endpoint host";
                return -1;
            }
            port_sep = rb + 1;
        }
    } else {
        port_sep = memchr(p, ':', (size_t)(auth_end - p));
        host_end = port_sep ? port_sep : auth_end;
    }
    if (host_end == host_start) {
        *why = "endpoint has no host";
        return -1;
    }
    if (port_sep) {
        char *end;
        long port = strtol(port_sep + 1, &end, 10);
        if (end != auth_end || port <= 0 || port > 65535) {
            *why = "bad port in endpoint";
            return -1;
        }
        out->port = (int)port;
    }
    out->host = arena_strndup(arena, host_start, (size_t)(host_end - host_start));
    out->host_header = arena_strndup(arena, p, (size_t)(auth_end - p));
    const char *path = auth_end;
    size_t plen = strcspn(path, "?#");
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    out->base_path = arena_strndup(arena, path, plen);
    /* An endpoint may carry a query of its own, as Azure OpenAI's ?api-version= does: it goes
     * with every request to it (build_target puts the client's after it). */
    const char *query = path + strcspn(path, "?#");
    query += *query == '?';
    out->query = arena_strndup(arena, query, *query == '#' ? 0 : strcspn(query, "#"));
    if (!out->host || !out->host_header || !out->base_path || !out->query) {
        *why = "out of memory";
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the per-loop cache */

#define URL_CACHE_MAX 128

struct upstream_url_ref {
    unsigned refs; /* the cache's own one while listed, plus one per holder */
    uint64_t hash;
    upstream_url_ref_t *next;
    upstream_url_t url;
    const char *why; /* non-NULL: the endpoint is invalid, for this reason */
    char *endpoint, *label;
    arena_t arena; /* the strings above */
};

struct upstream_url_cache {
    uint64_t generation;
    upstream_url_ref_t *entries;
    size_t n;
};

static uint64_t hash_str(const char *s, size_t *len) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    const char *p = s;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    *len = (size_t)(p - s);
    return h;
}

void upstream_url_release(upstream_url_ref_t *e) {
    if (!e || --e->refs > 0) return;
    arena_free(&e->arena);
    free(e);
}

static void cache_clear(upstream_url_cache_t *c) {
    for (upstream_url_ref_t *e = c->entries, *next; e; e = next) {
        next = e->next;
        upstream_url_release(e);
    }
    c->entries = NULL;
    c->n = 0;
}

void upstream_url_cache_free(upstream_url_cache_t *c) {
    if (!c) return;
    cache_clear(c);
    free(c);
}

static upstream_url_ref_t *entry_new(const char *endpoint, size_t len, uint64_t hash) {
    upstream_url_ref_t *e = calloc(1, sizeof(*e));
    if (!e) return NULL;
    arena_init(&e->arena);
    e->hash = hash;
    e->endpoint = arena_strndup(&e->arena, endpoint, len);
    const char *why = NULL;
    if (!e->endpoint || upstream_parse_url(&e->arena, e->endpoint, &e->url, &why) != 0) {
        e->why = why ? why : "out of memory";
        return e;
    }
    /* The label, assembled once: "https://" host_header base_path. */
    const char *scheme = e->url.tls ? "https://" : "http://";
    size_t sl = strlen(scheme), hl = strlen(e->url.host_header), bl = strlen(e->url.base_path);
    e->label = arena_alloc(&e->arena, sl + hl + bl + 1);
    if (!e->label) {
        e->why = "out of memory";
        return e;
    }
    memcpy(e->label, scheme, sl);
    memcpy(e->label + sl, e->url.host_header, hl);
    memcpy(e->label + sl + hl, e->url.base_path, bl + 1);
    return e;
}

upstream_url_ref_t *upstream_url_get(route_ctx_t *ctx, const char *endpoint,
                                     const upstream_url_t **url, const char **label,
                                     const char **why) {
    upstream_url_cache_t *c = ctx->url_cache;
    if (!c && !(c = ctx->url_cache = calloc(1, sizeof(*c)))) {
        *why = "out of memory";
        return NULL;
    }
    /* Entries for upstreams that are gone would otherwise stay until the cache fills. */
    uint64_t gen = ctx->store ? store_loop_upstreams_generation(ctx->store) : 0;
    if (gen != c->generation) {
        cache_clear(c);
        c->generation = gen;
    }
    size_t len;
    uint64_t h = hash_str(endpoint, &len);
    upstream_url_ref_t *e = c->entries;
    for (; e; e = e->next)
        if (e->hash == h && strcmp(e->endpoint, endpoint) == 0) break;
    if (!e) {
        if (c->n >= URL_CACHE_MAX) cache_clear(c); /* endpoints from a script, without end */
        if (!(e = entry_new(endpoint, len, h))) {
            *why = "out of memory";
            return NULL;
        }
        e->refs = 1;
        e->next = c->entries;
        c->entries = e;
        c->n++;
    }
    if (e->why) {
        *why = e->why;
        return NULL;
    }
    e->refs++;
    *url = &e->url;
    *label = e->label;
    return e;
}
