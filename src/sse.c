/* sse.c: owns the incremental text/event-stream framer (the WHATWG "event stream
 * interpretation": line ends, comments, fields, dispatch on a blank line). It must not look
 * inside event payloads, allocate per event once its buffers have grown, or hold more than
 * max_event bytes of one event however the bytes arrive. */
#include "route/sse.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len, cap;
} sse_buf_t;

struct sse_parser {
    sse_event_cb cb;
    sse_boundary_cb boundary_cb;
    void *ud;
    size_t max_event;
    const char *feed_start; /* the caller's buffer in this sse_feed, for boundary offsets */

    /* A line cut by the end of a feed; in_line is set even when its bytes were not kept
     * (dropped event) because an unterminated line is still a non-blank line. */
    sse_buf_t line;
    int in_line;

    /* The data and event fields point into the caller's buffer while a feed runs (no copy
     * for the usual one-data-line event that lies in one read) and into these owned buffers
     * otherwise. */
    sse_buf_t data, event;
    const char *data_ref, *event_ref;
    size_t data_ref_len, event_ref_len;
    int has_data, has_event;

    size_t size; /* bytes of the current event's lines, terminators excluded */
    int drop;    /* the current event went over max_event: skip to its blank line */
    int pending_cr;
    int bom; /* bytes of a leading UTF-8 BOM matched so far; -1 once past the start */
};

static const char bom_bytes[3] = {'\xEF', '\xBB', '\xBF'};

static int buf_reserve(sse_buf_t *b, size_t extra, size_t limit) {
    if (extra <= b->cap - b->len) return 0;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap * 2 : 256;
    /* Growth stops near the event limit so a dropped giant event cannot double memory. */
    if (cap > limit) cap = limit;
    if (cap < need) cap = need;
    char *n = realloc(b->p, cap);
    if (!n) return -1;
    b->p = n;
    b->cap = cap;
    return 0;
}

static int buf_append(sse_buf_t *b, const char *s, size_t n, size_t limit) {
    if (buf_reserve(b, n, limit)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static void reset_event(sse_parser_t *p) {
    p->has_data = p->has_event = 0;
    p->data_ref = p->event_ref = NULL;
    p->data.len = p->event.len = 0;
    p->size = 0;
    p->drop = 0;
}

static void drop_event(sse_parser_t *p) {
    reset_event(p);
    p->drop = 1;
}

static void dispatch(sse_parser_t *p) {
    if (!p->drop && p->has_data) {
        const char *ev = NULL;
        size_t ev_len = 0;
        if (p->has_event) {
            ev = p->event_ref ? p->event_ref : p->event.p;
            ev_len = p->event_ref ? p->event_ref_len : p->event.len;
        }
        const char *d = p->data_ref ? p->data_ref : (p->data.p ? p->data.p : "");
        size_t d_len = p->data_ref ? p->data_ref_len : p->data.len;
        p->cb(p->ud, ev, ev_len, d, d_len);
    }
    reset_event(p);
}

/* stable: v lies in the caller's buffer for the rest of this feed, so it may be borrowed. */
static void add_data(sse_parser_t *p, const char *v, size_t n, int stable) {
    if (!p->has_data) {
        p->has_data = 1;
        if (stable) {
            p->data_ref = v;
            p->data_ref_len = n;
            return;
        }
        if (buf_append(&p->data, v, n, p->max_event)) drop_event(p);
        return;
    }
    if (p->data_ref) {
        if (buf_append(&p->data, p->data_ref, p->data_ref_len, p->max_event)) {
            drop_event(p);
            return;
        }
        p->data_ref = NULL;
    }
    if (buf_append(&p->data, "\n", 1, p->max_event) || buf_append(&p->data, v, n, p->max_event))
        drop_event(p);
}

static void set_event(sse_parser_t *p, const char *v, size_t n, int stable) {
    p->event_ref = NULL;
    p->event.len = 0;
    /* An empty event type means the default ("message"), reported as NULL. */
    p->has_event = n > 0;
    if (!n) return;
    if (stable) {
        p->event_ref = v;
        p->event_ref_len = n;
    } else if (buf_append(&p->event, v, n, p->max_event)) {
        drop_event(p);
    }
}

static void process_line(sse_parser_t *p, const char *s, size_t n, int stable) {
    if (n == 0) {
        dispatch(p);
        return;
    }
    if (p->drop) return;
    if (n > p->max_event - p->size) {
        drop_event(p);
        return;
    }
    p->size += n;
    if (s[0] == ':') return;
    /* Nearly every line of an API stream is "data: ...": no search for its colon. */
    if (n >= 5 && memcmp(s, "data:", 5) == 0) {
        const char *v = s + 5;
        size_t vlen = n - 5;
        if (vlen && *v == ' ') {
            v++;
            vlen--;
        }
        add_data(p, v, vlen, stable);
        return;
    }
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen && *v == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && memcmp(s, "data", 4) == 0)
        add_data(p, v, vlen, stable);
    else if (flen == 5 && memcmp(s, "event", 5) == 0)
        set_event(p, v, vlen, stable);
    /* id, retry and unknown fields carry nothing the proxy uses. */
}

/* Keeps the start of a line that the feed cut, within the event's budget. */
static void keep_partial(sse_parser_t *p, const char *s, size_t n) {
    p->in_line = 1;
    if (p->drop) return;
    if (p->line.len + n > p->max_event - p->size || p->line.len + n < n) {
        drop_event(p);
        p->line.len = 0;
        return;
    }
    if (buf_append(&p->line, s, n, p->max_event)) {
        drop_event(p);
        p->line.len = 0;
    }
}

/* Borrowed fields must not outlive the caller's buffer. */
static void own_fields(sse_parser_t *p) {
    if (p->data_ref) {
        p->data.len = 0;
        if (buf_append(&p->data, p->data_ref, p->data_ref_len, p->max_event)) drop_event(p);
        p->data_ref = NULL;
    }
    if (p->event_ref) {
        p->event.len = 0;
        if (buf_append(&p->event, p->event_ref, p->event_ref_len, p->max_event)) drop_event(p);
        p->event_ref = NULL;
    }
}

static void feed_lines(sse_parser_t *p, const char *s, size_t len) {
    const char *end = s + len;
    /* Next '\n' and '\r' at or after s, found once and reused, so a stream that uses only
     * one kind of line end is not rescanned for the other on every line. */
    const char *nl = NULL, *cr = NULL;

    if (p->pending_cr) {
        p->pending_cr = 0;
        if (s < end && *s == '\n') s++;
    }
    while (s < end) {
        if (!nl || nl < s) {
            /* The blank line that ends an event usually follows at once: no call for it. */
            nl = *s == '\n' ? s : memchr(s, '\n', (size_t)(end - s));
            if (!nl) nl = end;
        }
        if (!cr || cr < s) {
            cr = memchr(s, '\r', (size_t)(end - s));
            if (!cr) cr = end;
        }
        const char *eol = nl < cr ? nl : cr;
        if (eol == end) {
            keep_partial(p, s, (size_t)(end - s));
            break;
        }
        int blank = 0;
        if (p->in_line) {
            keep_partial(p, s, (size_t)(eol - s));
            /* Non-blank whatever was kept: process_line skips the bytes when dropping. */
            process_line(p, p->line.p, p->drop ? 1 : p->line.len, 0);
            p->line.len = 0;
            p->in_line = 0;
        } else {
            blank = eol == s;
            process_line(p, s, (size_t)(eol - s), 1);
        }
        s = eol + 1;
        if (*eol == '\r') {
            if (s == end)
                p->pending_cr = 1;
            else if (*s == '\n')
                s++;
        }
        if (blank && p->boundary_cb) p->boundary_cb(p->ud, (size_t)(s - p->feed_start));
    }
    own_fields(p);
}

int sse_event_data(const char *raw, size_t len, size_t *at, size_t *n) {
    int found = 0;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && raw[e] != '\n' && raw[e] != '\r')
            e++;
        const char *s = raw + i;
        size_t l = e - i;
        if (l >= 4 && memcmp(s, "data", 4) == 0 && (l == 4 || s[4] == ':')) {
            if (found++) return -1;
            size_t v = l > 4 ? 5 : 4;
            if (v < l && s[v] == ' ') v++;
            *at = i + v;
            *n = l - v;
        }
        i = e + (e < len && raw[e] == '\r' && e + 1 < len && raw[e + 1] == '\n' ? 2 : 1);
    }
    return found == 1 ? 0 : -1;
}

sse_parser_t *sse_new(sse_event_cb cb, void *ud, size_t max_event) {
    sse_parser_t *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->cb = cb;
    p->ud = ud;
    p->max_event = max_event;
    return p;
}

void sse_set_boundary_cb(sse_parser_t *p, sse_boundary_cb cb) {
    if (p) p->boundary_cb = cb;
}

int sse_at_boundary(const sse_parser_t *p) {
    return !p || (!p->in_line && !p->has_data && !p->has_event && !p->size && !p->drop);
}

void sse_feed(sse_parser_t *p, const char *data, size_t len) {
    if (!p || !len) return;
    p->feed_start = data;
    /* A leading BOM is ignored (WHATWG); it may arrive split across feeds. */
    while (p->bom >= 0 && len) {
        if (*data != bom_bytes[p->bom]) {
            int matched = p->bom;
            p->bom = -1;
            if (matched) feed_lines(p, bom_bytes, (size_t)matched);
            break;
        }
        data++;
        len--;
        if (++p->bom == 3) p->bom = -1;
    }
    if (len) feed_lines(p, data, len);
}

void sse_finish(sse_parser_t *p) {
    if (!p) return;
    if (p->bom > 0) feed_lines(p, bom_bytes, (size_t)p->bom);
    p->bom = -1;
    if (p->in_line) {
        process_line(p, p->line.p, p->drop ? 1 : p->line.len, 0);
        p->line.len = 0;
        p->in_line = 0;
    }
    p->pending_cr = 0;
    dispatch(p);
}

void sse_free(sse_parser_t *p) {
    if (!p) return;
    free(p->line.p);
    free(p->data.p);
    free(p->event.p);
    free(p);
}
