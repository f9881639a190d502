/* util.c: time text in the Go program's formats, UUIDs and randomness (the OS's for secrets, a
 * per-loop block of it for ids), constant-time comparison, arenas and their block pool,
 * growable buffers, number text, refbufs and logging. It must stay free of HTTP,
 * SQLite and Lua, and must never log secrets (callers pass none).
 *
 * The only global mutable state in the project is the log configuration below (level and
 * text/JSON format): it is set once at start-up, before any thread exists, and only read
 * afterwards, so threading it through every call that may log would buy nothing. */
#include "route/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static int log_min_level = LOG_INFO;
static int log_json; /* -log-format json: each line one JSON object */

#define NS_PER_SEC 1000000000LL

/* ---- time ---- */

int64_t util_now_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

int64_t util_now_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static char *put2(char *o, int v) {
    o[0] = (char)('0' + v / 10 % 10);
    o[1] = (char)('0' + v % 10);
    return o + 2;
}

/* Both Go layouts differ only in the date/time separator and how a zero offset is shown.
 * Digits are placed by hand: the writer formats a time for every row. */
static size_t format_time(char *buf, size_t cap, int64_t wall_ns, char sep, int zulu) {
    int64_t sec = wall_ns / NS_PER_SEC, frac = wall_ns % NS_PER_SEC;
    if (frac < 0) {
        frac += NS_PER_SEC;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    localtime_r(&t, &tm);
    char tmp[64], *o = tmp;
    int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999) { /* outside what a clock gives: the general path */
        int n = snprintf(tmp, sizeof tmp, "%04d", year);
        o = tmp + (n > 0 && n < 16 ? n : 0);
    } else {
        o = put2(o, year / 100);
        o = put2(o, year % 100);
    }
    *o++ = '-';
    o = put2(o, tm.tm_mon + 1);
    *o++ = '-';
    o = put2(o, tm.tm_mday);
    *o++ = sep;
    o = put2(o, tm.tm_hour);
    *o++ = ':';
    o = put2(o, tm.tm_min);
    *o++ = ':';
    o = put2(o, tm.tm_sec);
    if (frac) {
        char digits[9];
        for (int i = 8; i >= 0; i--, frac /= 10)
            digits[i] = (char)('0' + frac % 10);
        int len = 9;
        while (digits[len - 1] == '0')
            len--;
        *o++ = '.';
        memcpy(o, digits, (size_t)len);
        o += len;
    }
    long off = tm.tm_gmtoff / 60;
    if (zulu && off == 0) {
        *o++ = 'Z';
    } else {
        long a = labs(off);
        *o++ = off < 0 ? '-' : '+';
        o = put2(o, (int)(a / 60 % 100));
        *o++ = ':';
        o = put2(o, (int)(a % 60));
    }
    size_t n = (size_t)(o - tmp);
    if (cap == 0) return 0;
    if (n >= cap) n = cap - 1;
    memcpy(buf, tmp, n);
    buf[n] = '\0';
    return n;
}

size_t util_format_db_time(char *buf, size_t cap, int64_t wall_ns) {
    return format_time(buf, cap, wall_ns, ' ', 0);
}

size_t util_format_json_time(char *buf, size_t cap, int64_t wall_ns) {
    return format_time(buf, cap, wall_ns, 'T', 1);
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9') return -1;
        v = v * 10 + (**p - '0');
    }
    *out = v;
    return 0;
}

int util_parse_db_time(const char *text, int64_t *wall_ns) {
    const char *p = text;
    int y, mo, d, h = 0, mi = 0, s = 0;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
        return -1;
    int64_t frac = 0;
    if (*p == ' ' || *p == 'T') {
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi)) return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &s)) return -1;
            if (*p == '.') {
                int nd = 0;
                for (p++; *p >= '0' && *p <= '9'; p++, nd++)
                    if (nd < 9) frac = frac * 10 + (*p - '0');
                if (nd == 0) return -1;
                for (; nd < 9; nd++)
                    frac *= 10;
            }
        }
    }
    int off = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om)) return -1;
        off = sign * (oh * 60 + om) * 60;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) return -1;
    int64_t sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off;
    /* int64 nanoseconds span 1677..2262. Earlier times (Go's zero time among them) can only
     * mean "never"; later ones cannot come from a clock. */
    if (sec < INT64_MIN / NS_PER_SEC + 1) {
        *wall_ns = INT64_MIN;
        return 0;
    }
    if (sec > INT64_MAX / NS_PER_SEC - 1) return -1;
    *wall_ns = sec * NS_PER_SEC + frac;
    return 0;
}

/* No real call succeeded at or before the epoch, so that whole range means "never". */
int util_time_is_never(int64_t wall_ns) {
    return wall_ns <= 0;
}

/* ---- ids and secrets ---- */

int util_random_bytes(void *out, size_t n) {
    unsigned char *p = out;
    while (n) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static void format_uuid(char out[37], const unsigned char b[16]) {
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

void util_uuid4(char out[37]) {
    unsigned char b[16];
    if (util_random_bytes(b, sizeof b) != 0) {
        /* getrandom only fails on kernels older than 3.17; ids must still be unique. */
        route_log(LOG_ERROR, "getrandom failed, uuid from the clock: %s", strerror(errno));
        int64_t t = util_now_wall_ns() ^ util_now_mono_ns();
        memcpy(b, &t, sizeof t);
        memcpy(b + 8, &t, sizeof t);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(out, b);
}

static void uuid7_from(char out[37], unsigned char b[16], int64_t wall_ns) {
    uint64_t ms = (uint64_t)(wall_ns / 1000000);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(out, b);
}

void util_uuid7(char out[37], int64_t wall_ns) {
    unsigned char b[16];
    if (util_random_bytes(b + 6, 10) != 0) {
        util_uuid4(out);
        return;
    }
    uuid7_from(out, b, wall_ns);
}

int util_rng_bytes(util_rng_t *rng, void *out, size_t n) {
    unsigned char *o = out;
    while (n) {
        if (rng->avail == 0) {
            if (util_random_bytes(rng->buf, sizeof rng->buf) != 0) return -1;
            rng->avail = sizeof rng->buf;
        }
        size_t take = n < rng->avail ? n : rng->avail;
        unsigned char *src = rng->buf + sizeof rng->buf - rng->avail;
        memcpy(o, src, take);
        rng->avail -= take;
        o += take;
        n -= take;
    }
    return 0;
}

void util_uuid7_rng(util_rng_t *rng, char out[37], int64_t wall_ns) {
    unsigned char b[16];
    if (!rng || util_rng_bytes(rng, b + 6, 10) != 0) {
        util_uuid7(out, wall_ns);
        return;
    }
    uuid7_from(out, b, wall_ns);
}

int util_secure_equal(const char *a, size_t alen, const char *b, size_t blen) {
    if (alen != blen) return 0;
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned char)a[i] ^ (unsigned char)b[i];
    return diff == 0;
}

/* ---- arena ---- */

#define ARENA_BLOCK 8192

struct arena_block {
    arena_block_t *next;
    size_t used, cap;
    _Alignas(8) char data[];
};

static arena_block_t *arena_block_new(size_t cap) {
    arena_block_t *b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = NULL;
    b->used = 0;
    b->cap = cap;
    return b;
}

/* A standard block, from the pool when it has one. */
static arena_block_t *arena_block_get(arena_t *a) {
    arena_pool_t *p = a->pool;
    if (p && p->free) {
        arena_block_t *b = p->free;
        p->free = b->next;
        p->n_free--;
        b->next = NULL;
        b->used = 0;
        return b;
    }
    return arena_block_new(ARENA_BLOCK);
}

void arena_init(arena_t *a) {
    a->head = NULL;
    a->pool = NULL;
}

void arena_init_pooled(arena_t *a, arena_pool_t *pool) {
    a->head = NULL;
    a->pool = pool;
}

void arena_pool_release(arena_pool_t *p) {
    for (arena_block_t *b = p->free, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    p->free = NULL;
    p->n_free = 0;
}

void *arena_alloc(arena_t *a, size_t n) {
    if (n > SIZE_MAX / 2) return NULL;
    n = (n + 7) & ~(size_t)7;
    arena_block_t *h = a->head;
    if (h && h->cap - h->used >= n) {
        void *p = h->data + h->used;
        h->used += n;
        return p;
    }
    /* A big request gets a block of its own, linked behind the head so the head's free space
     * stays in use for the small allocations that follow. */
    int own = n > ARENA_BLOCK / 4;
    arena_block_t *b = own ? arena_block_new(n) : arena_block_get(a);
    if (!b) return NULL;
    b->used = n;
    if (own && h) {
        b->next = h->next;
        h->next = b;
    } else {
        b->next = h;
        a->head = b;
    }
    return b->data;
}

char *arena_strndup(arena_t *a, const char *s, size_t n) {
    char *p = arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(arena_t *a, const char *s) {
    return arena_strndup(a, s, strlen(s));
}

char *arena_printf(arena_t *a, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = n < 0 ? NULL : arena_alloc(a, (size_t)n + 1);
    if (p) vsnprintf(p, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return p;
}

void arena_free(arena_t *a) {
    arena_pool_t *p = a->pool;
    size_t max = p && p->max_free ? p->max_free : ARENA_POOL_MAX;
    for (arena_block_t *b = a->head, *next; b; b = next) {
        next = b->next;
        if (p && b->cap == ARENA_BLOCK && p->n_free < max) {
            b->next = p->free;
            p->free = b;
            p->n_free++;
            continue;
        }
        free(b);
    }
    a->head = NULL;
}

/* ---- buf ---- */

/* Keeps one spare byte so data is always NUL-terminated for callers that want a C string. */
int buf_reserve(buf_t *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(buf_t *b, const void *p, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_appends(buf_t *b, const char *s) {
    return buf_append(b, s, strlen(s));
}

int buf_printf(buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    size_t len;
    unsigned min;
    if (s[0] < 0xc2 || s[0] > 0xf4) return 0;
    if (s[0] < 0xe0) {
        len = 2;
        min = 0x80;
    } else if (s[0] < 0xf0) {
        len = 3;
        min = 0x800;
    } else {
        len = 4;
        min = 0x10000;
    }
    if (n < len) return 0;
    unsigned cp = s[0] & (0x3f >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Like Go's encoding/json: short escapes for \n \r \t, \u00XX for other control bytes, and
 * invalid UTF-8 (a binary body, say) as U+FFFD so the output stays valid JSON. */
int buf_append_json_string(buf_t *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    if (buf_reserve(b, n + 2)) return -1;
    b->data[b->len++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\' && *p < 0x80)
            p++;
        size_t ulen;
        while (p < end && *p >= 0x80 && (ulen = utf8_len(p, (size_t)(end - p))) > 0)
            p += ulen;
        if (p > run) {
            if (buf_append(b, run, (size_t)(p - run))) return -1;
            continue;
        }
        int rc;
        switch (*p) {
        case '"':
            rc = buf_append(b, "\\\"", 2);
            break;
        case '\\':
            rc = buf_append(b, "\\\\", 2);
            break;
        case '\n':
            rc = buf_append(b, "\\n", 2);
            break;
        case '\r':
            rc = buf_append(b, "\\r", 2);
            break;
        case '\t':
            rc = buf_append(b, "\\t", 2);
            break;
        default:
            rc = *p < 0x20 ? buf_printf(b, "\\u%04x", *p) : buf_append(b, "\\ufffd", 6);
        }
        if (rc) return -1;
        p++;
    }
    return buf_append(b, "\"", 1);
}

void buf_free(buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- number text ---- */

size_t util_fmt_i64(char *out, int64_t v) {
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

size_t util_fmt_hex(char *out, uint64_t v) {
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    size_t len = 0;
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

int buf_append_i64(buf_t *b, int64_t v) {
    char num[24];
    return buf_append(b, num, util_fmt_i64(num, v));
}

/* ---- refbuf ---- */

refbuf_t *refbuf_new(size_t cap) {
    refbuf_t *b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->refs = 1;
    b->cap = cap;
    b->len = 0;
    return b;
}

void refbuf_retain(refbuf_t *b) {
    b->refs++;
}

void refbuf_release(refbuf_t *b) {
    if (--b->refs == 0) free(b);
}

/* ---- logging ---- */

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void route_log_set_level(int level) {
    log_min_level = level;
}

void route_log_set_json(int on) {
    log_json = on;
}

/* {"time":...,"level":...,"message":...}: the message JSON-escaped, cut at 2 KiB. */
static void vlog_json(int level, const char *fmt, va_list ap) {
    char text[2048], t[40];
    int n = vsnprintf(text, sizeof text, fmt, ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
    int64_t now = util_now_wall_ns();
    time_t secs = (time_t)(now / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t tl = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(t + tl, sizeof t - tl, ".%03dZ", (int)(now / 1000000 % 1000));
    static const char *const lower[] = {"debug", "info", "warn", "error"};
    buf_t b = {0};
    buf_printf(&b, "{\"time\":\"%s\",\"level\":\"%s\",\"message\":", t, lower[level]);
    buf_append_json_string(&b, text, len);
    buf_append(&b, "}\n", 2);
    /* One fwrite per line, so lines from different threads never interleave. */
    if (b.data) fwrite(b.data, 1, b.len, stderr);
    buf_free(&b);
}

void route_vlog(int level, const char *fmt, va_list ap) {
    if (level < log_min_level) return;
    if (level > LOG_ERROR) level = LOG_ERROR;
    if (log_json) {
        vlog_json(level, fmt, ap);
        return;
    }
    char line[2048];
    int64_t now = util_now_wall_ns();
    time_t secs = (time_t)(now / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(line, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03dZ %s ", (int)(now / 1000000 % 1000),
                          level_names[level]);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    n = m < 0 ? n : n + (size_t)m < sizeof line - 1 ? n + (size_t)m : sizeof line - 2;
    line[n++] = '\n';
    /* One fwrite per line, so lines from different threads never interleave. */
    fwrite(line, 1, n, stderr);
}

void route_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    route_vlog(level, fmt, ap);
    va_end(ap);
}

void route_log_limited(log_limiter_t *l, int level, const char *fmt, ...) {
    if (level < log_min_level) return;
    int64_t now = util_now_mono_ns();
    if (now < l->next_ns) {
        l->held_back++;
        return;
    }
    char text[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (l->held_back)
        route_log(level, "%s (and %llu more like it in the last %lld s)", text,
                  (unsigned long long)l->held_back, LOG_LIMIT_INTERVAL_NS / 1000000000LL);
    else
        route_log(level, "%s", text);
    l->held_back = 0;
    l->next_ns = now + LOG_LIMIT_INTERVAL_NS;
}
