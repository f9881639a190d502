/* http_headers.c: header accumulation for both llhttp adapters (server requests, upstream
 * responses).
 *
 * Owns: joining llhttp's pieces of names and values, lower-casing names, trimming values,
 * the header-block byte and count limits, and the token check on names.
 * Must not: know which side of the proxy it parses for, or keep anything past the message
 * (entries live in the caller's arena). */
#include "http_headers.h"

#include <stdint.h>
#include <string.h>

void http_headers_init(http_headers_t *h, size_t max_bytes, size_t max_headers, int strict) {
    memset(h, 0, sizeof(*h));
    h->max_bytes = max_bytes;
    h->max_headers = max_headers;
    h->strict_names = strict;
}

void http_headers_reset(http_headers_t *h) {
    h->name.len = h->value.len = 0;
    h->items = NULL;
    h->n = h->cap = 0;
    h->bytes = 0;
}

int http_headers_count(http_headers_t *h, size_t n) {
    h->bytes += n;
    return h->bytes > h->max_bytes ? HH_TOO_LARGE : HH_OK;
}

int http_headers_on_field(http_headers_t *h, const char *at, size_t len) {
    if (http_headers_count(h, len + 4)) return HH_TOO_LARGE; /* ": " and CRLF */
    return buf_append(&h->name, at, len) ? HH_NOMEM : HH_OK;
}

int http_headers_on_value(http_headers_t *h, const char *at, size_t len) {
    if (http_headers_count(h, len)) return HH_TOO_LARGE;
    return buf_append(&h->value, at, len) ? HH_NOMEM : HH_OK;
}

/* RFC 9110 token characters: llhttp's non-strict build lets "Name : value" through, and
 * RFC 9112 says a server must reject whitespace before the colon. */
static int is_token(const char *s, size_t n) {
    /* A bit per ASCII character that may appear in a token (33..126 less the separators
     * "(),/:;<=>?@[\\]{} and the quote): this runs for every header of every request. */
    static const uint64_t token_bits[2] = {0x03ff6cfa00000000ULL, 0x57ffffffc7fffffeULL};
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 128 || !(token_bits[ch >> 6] >> (ch & 63) & 1)) return 0;
    }
    return 1;
}

int http_headers_on_complete(http_headers_t *h, arena_t *arena) {
    if (h->strict_names && !is_token(h->name.data, h->name.len)) return HH_BAD_NAME;
    if (h->max_headers && h->n >= h->max_headers) return HH_TOO_MANY;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        route_header_t *items = arena_alloc(arena, cap * sizeof(*items));
        if (!items) return HH_NOMEM;
        if (h->n) memcpy(items, h->items, h->n * sizeof(*items));
        h->items = items;
        h->cap = cap;
    }
    const char *v = h->value.data ? h->value.data : "";
    size_t vl = h->value.len;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    route_header_t *e = &h->items[h->n];
    e->name = arena_strndup(arena, h->name.data ? h->name.data : "", h->name.len);
    e->value = arena_strndup(arena, v, vl);
    if (!e->name || !e->value) return HH_NOMEM;
    e->name_len = h->name.len;
    e->value_len = vl;
    for (size_t i = 0; i < e->name_len; i++)
        if (e->name[i] >= 'A' && e->name[i] <= 'Z') e->name[i] += 'a' - 'A';
    h->n++;
    h->name.len = h->value.len = 0;
    return HH_OK;
}

const route_header_t *http_headers_find(const route_header_t *items, size_t n, const char *name) {
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (items[i].name_len == len && memcmp(items[i].name, name, len) == 0) return &items[i];
    return NULL;
}

void http_headers_free(http_headers_t *h) {
    buf_free(&h->name);
    buf_free(&h->value);
}
