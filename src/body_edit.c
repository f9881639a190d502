/* body_edit.c: owns the edits the proxy makes to JSON on its way through: a request body
 * before it goes upstream (the forced stream_options.include_usage) and the "usage": null
 * that forcing makes an upstream add to every chunk of the stream back, as single
 * replacements located with extract.c's validating JSON scanner, so that every byte outside
 * the edit stays as it came.
 * Must not: decide when to edit (proxy.c), allocate (the caller holds the result), or edit
 * anything it could not parse: a body that is not one valid JSON object is left alone. */
#include "route/body_edit.h"

#include <string.h>

#include "route/extract.h"

#define LIT(e, s) ((e)->insert = (s), (e)->insert_len = sizeof(s) - 1)

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int value_is(const char *body, const extract_json_member_t *m, const char *lit) {
    size_t n = strlen(lit);
    return m->value_end - m->value_start == n && memcmp(body + m->value_start, lit, n) == 0;
}

int body_edit_include_usage(const char *body, size_t len, body_edit_t *e) {
    memset(e, 0, sizeof(*e));
    if (!body) return -1;
    size_t at = 0;
    while (at < len && is_ws(body[at]))
        at++;
    extract_json_member_t top;
    if (extract_json_find_member(body, len, at, 1, "stream_options", &top) != 0) return -1;
    for (size_t i = top.close + 1; i < len; i++)
        if (!is_ws(body[i])) return -1;

    if (!top.found) {
        e->at = top.close;
        if (top.has_members)
            LIT(e, ",\"stream_options\":{\"include_usage\":true}");
        else
            LIT(e, "\"stream_options\":{\"include_usage\":true}");
        return 1;
    }
    if (value_is(body, &top, "null")) {
        e->at = top.value_start;
        e->cut = top.value_end - top.value_start;
        LIT(e, "{\"include_usage\":true}");
        return 1;
    }
    if (body[top.value_start] != '{') return 0;
    extract_json_member_t so;
    if (extract_json_find_member(body, len, top.value_start, 2, "include_usage", &so) != 0)
        return -1; /* cannot be: the whole body was validated */
    if (!so.found) {
        e->at = so.close;
        if (so.has_members)
            LIT(e, ",\"include_usage\":true");
        else
            LIT(e, "\"include_usage\":true");
        return 1;
    }
    if (value_is(body, &so, "false") || value_is(body, &so, "null")) {
        e->at = so.value_start;
        e->cut = so.value_end - so.value_start;
        LIT(e, "true");
        return 1;
    }
    return 0;
}

int body_edit_remove_null_member(const char *json, size_t len, const char *key, body_edit_t *e) {
    memset(e, 0, sizeof(*e));
    size_t at = 0;
    while (at < len && is_ws(json[at]))
        at++;
    extract_json_member_t m;
    if (!json || extract_json_find_member(json, len, at, 1, key, &m) != 0) return -1;
    for (size_t i = m.close + 1; i < len; i++)
        if (!is_ws(json[i])) return -1;
    if (!m.found || !value_is(json, &m, "null")) return 0;
    e->at = m.member_start;
    e->cut = m.member_end - m.member_start;
    e->insert = "";
    return 1;
}

size_t body_edit_len(size_t len, const body_edit_t *e) {
    return len - e->cut + e->insert_len;
}

void body_edit_apply(const char *body, size_t len, const body_edit_t *e, char *out) {
    memcpy(out, body, e->at);
    memcpy(out + e->at, e->insert, e->insert_len);
    memcpy(out + e->at + e->insert_len, body + e->at + e->cut, len - e->at - e->cut);
}
