/* upstream_url.c: upstream endpoint URLs.
 *
 * Owns: parsing "http(s)://host[:port][/path]" into scheme, host (IPv6 without brackets),
 * port, base path and the Host header value.
 * Must not: resolve names, open connections, or allocate outside the caller's arena. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route/upstream.h"

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
    const char *slash = strchr(p, '/');
    const char *auth_end = slash ? slash : p + strlen(p);
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
    if (!out->host || !out->host_header || !out->base_path) {
        *why = "out of memory";
        return -1;
    }
    return 0;
}
