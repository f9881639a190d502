/* extract.c: owns what the proxy learns from a body it forwards: assistant text, model and
 * token usage of a response (text/event-stream events or an application/json body), and the
 * "model"/"stream" of a request body. It must never block or fail the stream it watches:
 * malformed input is skipped, memory stays bounded (content cap, body cap, event cap,
 * template cap), and no allocation happens per SSE event once the buffers have grown. A
 * per-loop pool recycles extractors with their buffers (extract_pool_get/put), so a response
 * costs no malloc for them either.
 *
 * Two readers, one result. The full reader is a validating single-pass JSON scanner, written
 * instead of using jansson by measurement (tests/bench/bench_extract.c): jansson builds and
 * frees a tree per event, ~4 us per chunk; the scanner takes ~0.25 us. It accepts exactly the
 * documents json_loadb(buf, len, 0) accepts (same UTF-8, escape, \u0000, number range and
 * 2048-level depth rules; duplicate keys: the last wins), with one deliberate difference:
 * jansson skips a NUL byte right after a number or a literal, here that is malformed
 * (tests/fuzz/fuzz_extract.c checks this against jansson).
 * The SSE fast path (templates, below) reads an event that has the shape of the last one the
 * scanner read by comparing the two at memcmp speed and scanning only the values that
 * changed; it gives exactly the scanner's result or declines, and then the scanner reads the
 * event (tests/fuzz/fuzz_fast.c checks fast == full on any bytes). */
#include "route/extract.h"
#include "route/sse.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* jansson's JSON_PARSER_MAX_DEPTH: it rejects deeper documents, so must we. */
#define JSON_MAX_DEPTH 2048
/* The largest body kept for parsing; the proxy refuses bigger request bodies anyway. */
#define EXTRACT_BODY_CAP (32u * 1024 * 1024)
/* One chat.completion.chunk is a few hundred bytes; anything near this is not one. */
#define EXTRACT_MAX_EVENT (4u * 1024 * 1024)

/* ---- scanner ---- */

typedef struct rec rec_t;

typedef struct {
    const unsigned char *p, *end;
    rec_t *rec; /* NULL, or where the document's holes are noted (see templates below) */
} scan_t;

/* The raw text between a string's quotes, validated; esc: it has backslash escapes. */
typedef struct {
    const char *p;
    size_t n;
    int esc;
} jstr_t;

/* What one document says, JSON semantics (a later duplicate key replaces an earlier one). */
/* The usage counts a document can carry: the three totals (Chat names or Responses names),
 * then the subsets the API reports. */
enum { U_PROMPT, U_COMPLETION, U_TOTAL, U_CACHED, U_REASONING, U_COUNT };

/* Small, as a template match copies a document per event. */
typedef struct {
    uint8_t has;  /* the value is an object */
    uint8_t ok;   /* bit U_xxx: the count is an integer */
    uint8_t seen; /* bit U_xxx: its key is there */
    int64_t v[U_COUNT];
} usage_t;
#define U_BIT(i) (1u << (i))

typedef struct {
    int has_model, has_content, has_text, stream;
    jstr_t model, content, text;
    usage_t usage;
    /* "choices": [] (a usage-only chunk when it has usage); the top-level "usage" is null */
    uint8_t choices_empty, usage_null;
    /* Responses API: the top-level "type" is response.output_text.delta, and its "delta" */
    uint8_t is_text_delta;
    int has_delta;
    jstr_t delta;
    /* What a template never has (template_match copies the members above only): a nested
     * "response" object (Responses API lifecycle events) with its model and usage, a JSON
     * body's "output" array (raw, validated). */
    int has_response, has_rmodel;
    jstr_t rmodel;
    usage_t rusage;
    const char *output;
    size_t output_len;
} doc_t;

enum { WANT_RESPONSE = 1, WANT_REQUEST = 2 };

/* A hole is a string or number value whose bytes may differ from one event to the next
 * without changing the document's structure: the places a template (below) lets vary. Its
 * role says what the result takes from it; a value that carries no role is INERT (an "id",
 * "created", "obfuscation"...), and a value that was replaced by a later duplicate key is
 * demoted to INERT, so that the last one wins on the fast path as in the scanner. */
enum {
    ROLE_INERT,
    ROLE_CONTENT,
    ROLE_TEXT,
    ROLE_DELTA,
    ROLE_USAGE0, /* ROLE_USAGE0 + U_xxx: a usage count; the last roles */
    ROLE_COUNT = ROLE_USAGE0 + U_COUNT
};

#define TEMPLATE_MAX_HOLES 24

typedef struct {
    uint32_t start, end; /* the value's bytes, quotes included: [start, end) */
    uint8_t is_num, role, esc;
} hole_t;

struct rec {
    const unsigned char *base;
    hole_t holes[TEMPLATE_MAX_HOLES];
    unsigned n;
    int role_hole[ROLE_COUNT]; /* index of the hole that currently holds the role, or -1 */
    int lost;                  /* a role hole did not fit: the document cannot be a template */
};

/* 1: byte needs a look inside a string ('"', '\\', control, non-ASCII). */
static const unsigned char str_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* The smallest decimal that strtod rounds to infinity (2^1024 - 2^970), as 0.d1d2... x
 * 10^309: a real at or above it is "real number overflow" to jansson. */
static const char dbl_overflow_digits[] =
    "17976931348623158079372897140530341507993413271003782693617377898044496829276475094664901"
    "79775872070963302864166928879109465555478519404026306574886715058206819089020007083836762"
    "73854845817711531764475730270069855571366959622842914819860834936475292719074168444365510"
    "704342711559699508093042880177904174497792";

#define ONES 0x0101010101010101ull

static inline int is_digit(unsigned c) {
    return c - '0' < 10u;
}

static inline void skip_ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hex4(const unsigned char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (is_digit(c))
            v |= (int)(c - '0');
        else if ((c | 0x20) - 'a' < 6u)
            v |= (int)((c | 0x20) - 'a' + 10);
        else
            return -1;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at p (non-ASCII lead byte), 0 when invalid: no overlong
 * forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);
    if (c < 0xC2) return 0;
    if (c < 0xE0) return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F)) return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F)) return 0;
        return 4;
    }
    return 0;
}

/* s->p at the opening quote. */
static int scan_string(scan_t *s, jstr_t *out) {
    const unsigned char *p = s->p + 1, *end = s->end, *start = p;
    int esc = 0;
    for (;;) {
        /* Eight bytes at a time while none is '"', '\\', a control or a non-ASCII byte. */
        while (end - p >= 8) {
            uint64_t v, q, b;
            memcpy(&v, p, 8);
            q = v ^ (ONES * '"');
            b = v ^ (ONES * '\\');
            if ((((q - ONES) & ~q) | ((b - ONES) & ~b) | ((v - ONES * 0x20) & ~v) | v) &
                (ONES * 0x80))
                break;
            p += 8;
        }
        while (p < end && !str_special[*p])
            p++;
        if (p >= end) return -1;
        unsigned c = *p;
        if (c == '"') break;
        if (c == '\\') {
            esc = 1;
            if (end - p < 2) return -1;
            c = p[1];
            if (c != 'u') {
                if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
                    c != 'r' && c != 't')
                    return -1;
                p += 2;
                continue;
            }
            int cp = end - p >= 6 ? hex4(p + 2) : -1;
            p += 6;
            /* \u0000 is refused by jansson unless JSON_ALLOW_NUL. */
            if (cp <= 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
                int lo = hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                p += 6;
            }
        } else if (c < 0x20) {
            return -1;
        } else {
            size_t n = utf8_seq(p, end);
            if (!n) return -1;
            p += n;
        }
    }
    out->p = (const char *)start;
    out->n = (size_t)(p - start);
    out->esc = esc;
    s->p = p + 1;
    return 0;
}

/* Decodes a validated string into out (room bytes), stopping before the first character
 * that does not fit, so a cut string still ends on a UTF-8 boundary. *cut reports a stop. */
static size_t decode_string(char *out, size_t room, const jstr_t *str, int *cut) {
    const char *s = str->p, *end = str->p + str->n;
    size_t o = 0;
    *cut = 0;
    while (s < end) {
        const char *bs = str->esc ? memchr(s, '\\', (size_t)(end - s)) : NULL;
        size_t run = (size_t)((bs ? bs : end) - s);
        if (run > room - o) {
            size_t k = room - o;
            while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
                k--;
            memcpy(out + o, s, k);
            *cut = 1;
            return o + k;
        }
        memcpy(out + o, s, run);
        o += run;
        s += run;
        if (s == end) break;
        char u[4];
        size_t ulen = 1;
        switch (s[1]) {
        case 'b':
            u[0] = '\b';
            break;
        case 'f':
            u[0] = '\f';
            break;
        case 'n':
            u[0] = '\n';
            break;
        case 'r':
            u[0] = '\r';
            break;
        case 't':
            u[0] = '\t';
            break;
        case 'u': {
            long cp = hex4((const unsigned char *)s + 2);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                cp =
                    0x10000 + ((cp - 0xD800) << 10) + (hex4((const unsigned char *)s + 8) - 0xDC00);
                s += 6;
            }
            s += 4;
            if (cp < 0x80) {
                u[0] = (char)cp;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
                ulen = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                ulen = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                ulen = 4;
            }
            break;
        }
        default:
            u[0] = s[1];
            break; /* '"', '\\', '/' */
        }
        s += 2;
        if (ulen > room - o) {
            *cut = 1;
            return o;
        }
        memcpy(out + o, u, ulen);
        o += ulen;
    }
    return o;
}

/* 1 when the real in these digit runs rounds to +-infinity (jansson: "real number overflow").
 * Decided on the digits, not with strtod, which would read the process locale. */
static int real_overflows(const unsigned char *ip, const unsigned char *ie, const unsigned char *fp,
                          const unsigned char *fe, long long exp) {
    const unsigned char *first = NULL;
    long long e10;
    if (*ip != '0') {
        first = ip;
        size_t n = (size_t)(ie - ip);
        e10 = (long long)(n > 1000000000 ? 1000000000 : n) + exp;
    } else {
        const unsigned char *q = fp;
        while (q && q < fe && *q == '0')
            q++;
        if (!q || q == fe) return 0; /* zero */
        size_t z = (size_t)(q - fp);
        first = q;
        e10 = exp - (long long)(z > 1000000000 ? 1000000000 : z);
    }
    /* value = 0.d1d2... x 10^e10 */
    if (e10 < 309) return 0;
    if (e10 > 309) return 1;
    const unsigned char *q = first;
    int in_int = first < ie && first >= ip;
    for (size_t k = 0; k < sizeof(dbl_overflow_digits) - 1; k++) {
        if (in_int && q == ie) {
            in_int = 0;
            q = fp;
        }
        if (!q || (!in_int && q >= fe))
            return 0; /* digits ran out: below the threshold, whose tail is non-zero */
        if (*q != (unsigned char)dbl_overflow_digits[k])
            return *q > (unsigned char)dbl_overflow_digits[k];
        q++;
    }
    return 1; /* at or above the threshold: ties round to even, which is infinity */
}

/* s->p at '-' or a digit. *is_int: an integer jansson keeps as json_int_t (int64). */
static int scan_number(scan_t *s, int *is_int, int64_t *ival) {
    const unsigned char *p = s->p, *end = s->end;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end) return -1;
    const unsigned char *ip = p;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p)) return -1;
    } else if (is_digit(*p)) {
        while (p < end && is_digit(*p))
            p++;
    } else {
        return -1;
    }
    const unsigned char *ie = p, *fp = NULL, *fe = NULL;
    int has_exp = 0;
    long long exp = 0;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p)) return -1;
        fp = p;
        while (p < end && is_digit(*p))
            p++;
        fe = p;
    }
    if (p < end && (*p | 0x20) == 'e') {
        int eneg = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= end || !is_digit(*p)) return -1;
        while (p < end && is_digit(*p)) {
            if (exp < 1000000000) exp = exp * 10 + (*p - '0');
            p++;
        }
        if (eneg) exp = -exp;
        has_exp = 1;
    }
    s->p = p;
    if (!fp && !has_exp) {
        uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
        for (const unsigned char *q = ip; q < ie; q++) {
            unsigned d = *q - '0';
            if (v > (limit - d) / 10) return -1; /* jansson: "too big integer" */
            v = v * 10 + d;
        }
        *is_int = 1;
        if (!neg)
            *ival = (int64_t)v;
        else
            *ival = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
        return 0;
    }
    *is_int = 0;
    return real_overflows(ip, ie, fp, fe, exp) ? -1 : 0;
}

static int scan_literal(scan_t *s) {
    const char *lit = *s->p == 't' ? "true" : *s->p == 'f' ? "false" : "null";
    size_t n = *s->p == 'f' ? 5 : 4;
    /* "truex" needs no check here: what follows a value must be , ] } or white space. */
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0) return -1;
    s->p += n;
    return 0;
}

/* Validates and skips any value whose depth (top level = 1) is depth. Iterative, so hostile
 * nesting costs a bit per level instead of a stack frame. */
static int skip_value(scan_t *s, unsigned depth) {
    unsigned char is_obj[JSON_MAX_DEPTH / 8 + 1];
    unsigned sp = 0;
    jstr_t tmp;
    int is_int;
    int64_t iv;

value:
    skip_ws(s);
    if (depth + sp > JSON_MAX_DEPTH || s->p >= s->end) return -1;
    switch (*s->p) {
    case '{':
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            goto after;
        }
        is_obj[sp / 8] |= (unsigned char)(1u << (sp % 8));
        sp++;
        goto key;
    case '[':
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            goto after;
        }
        is_obj[sp / 8] &= (unsigned char)~(1u << (sp % 8));
        sp++;
        goto value;
    case '"':
        if (scan_string(s, &tmp)) return -1;
        goto after;
    case 't':
    case 'f':
    case 'n':
        if (scan_literal(s)) return -1;
        goto after;
    default:
        if ((*s->p != '-' && !is_digit(*s->p)) || scan_number(s, &is_int, &iv)) return -1;
        goto after;
    }

key:
    skip_ws(s);
    if (s->p >= s->end || *s->p != '"' || scan_string(s, &tmp)) return -1;
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return -1;
    s->p++;
    goto value;

after:
    if (sp == 0) return 0;
    skip_ws(s);
    if (s->p >= s->end) return -1;
    {
        int obj = (is_obj[(sp - 1) / 8] >> ((sp - 1) % 8)) & 1;
        unsigned char c = *s->p++;
        if (c == ',') {
            if (obj) goto key;
            goto value;
        }
        if (c == (obj ? '}' : ']')) {
            sp--;
            goto after;
        }
    }
    return -1;
}

static int key_is_escaped(const jstr_t *k, const char *lit, size_t n) {
    char buf[32];
    int cut;
    size_t len = decode_string(buf, sizeof(buf), k, &cut);
    return !cut && len == n && memcmp(buf, lit, n) == 0;
}

/* Inline with a constant length, so the usual unescaped compare is a couple of loads. */
static inline int key_is(const jstr_t *k, const char *lit, size_t n) {
    if (!k->esc) return k->n == n && memcmp(k->p, lit, n) == 0;
    return key_is_escaped(k, lit, n);
}
#define KEY_IS(k, lit) key_is((k), lit, sizeof(lit) - 1)

/* Object members: s->p at '{' -> 1 when a member follows, 0 when empty; then after each
 * member next_member says 1 (another), 0 (closed) or -1. */
static int open_object(scan_t *s) {
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    return 1;
}

static int next_member(scan_t *s, unsigned char close) {
    skip_ws(s);
    if (s->p >= s->end) return -1;
    unsigned char c = *s->p++;
    if (c == ',') return 1;
    return c == close ? 0 : -1;
}

/* Reads a member name and its colon, leaving s->p at the value. */
static int scan_key(scan_t *s, jstr_t *k) {
    skip_ws(s);
    if (s->p >= s->end || *s->p != '"' || scan_string(s, k)) return -1;
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return -1;
    s->p++;
    skip_ws(s);
    return s->p < s->end ? 0 : -1;
}

/* The role's value was replaced or cleared: its old hole no longer feeds the result. */
static void rec_drop_role(scan_t *s, int role) {
    rec_t *r = s->rec;
    if (!r || r->role_hole[role] < 0) return;
    r->holes[r->role_hole[role]].role = ROLE_INERT;
    r->role_hole[role] = -1;
}

/* Notes the value just scanned, from start to s->p. */
static void rec_hole(scan_t *s, const unsigned char *start, int is_num, int role, int esc) {
    rec_t *r = s->rec;
    if (!r) return;
    if (role != ROLE_INERT) rec_drop_role(s, role);
    /* A missing inert hole only makes the template stricter, a missing role makes it
     * useless: the last slots are kept for roles. */
    if (r->n == TEMPLATE_MAX_HOLES ||
        (role == ROLE_INERT && r->n >= TEMPLATE_MAX_HOLES - ROLE_COUNT)) {
        if (role != ROLE_INERT) r->lost = 1;
        return;
    }
    hole_t *h = &r->holes[r->n];
    h->start = (uint32_t)(start - r->base);
    h->end = (uint32_t)(s->p - r->base);
    h->is_num = (uint8_t)is_num;
    h->role = (uint8_t)role;
    h->esc = (uint8_t)esc;
    if (role != ROLE_INERT) r->role_hole[role] = (int)r->n;
    r->n++;
}

/* role: the hole to note, or ROLE_LITERAL for a value the template must keep byte for byte. */
#define ROLE_LITERAL (-1)

static int take_string(scan_t *s, int *has, jstr_t *out, unsigned depth, int role) {
    if (*s->p == '"') {
        const unsigned char *start = s->p;
        *has = 1;
        if (scan_string(s, out)) return -1;
        if (role != ROLE_LITERAL) rec_hole(s, start, 0, role, out->esc);
        return 0;
    }
    *has = 0;
    if (role != ROLE_LITERAL) rec_drop_role(s, role);
    return skip_value(s, depth);
}

static int take_int(scan_t *s, int *ok, int64_t *out, unsigned depth, int role) {
    *ok = 0;
    rec_drop_role(s, role);
    if (*s->p == '-' || is_digit(*s->p)) {
        const unsigned char *start = s->p;
        int is_int;
        if (scan_number(s, &is_int, out)) return -1;
        *ok = is_int;
        /* Only an integer feeds usage; a real stays literal (no hole) so that it cannot turn
         * into one: an inert hole would take any number, and an integer there would leave the
         * template's "not a count" in place. */
        if (is_int) rec_hole(s, start, 1, role, 0);
        return 0;
    }
    return skip_value(s, depth);
}

/* A member value the result does not read: a string or number becomes an inert hole. */
static int skip_member(scan_t *s, unsigned depth) {
    const unsigned char *start = s->p;
    if (*s->p == '"') {
        jstr_t tmp;
        if (scan_string(s, &tmp)) return -1;
        rec_hole(s, start, 0, ROLE_INERT, tmp.esc);
        return 0;
    }
    if (*s->p == '-' || is_digit(*s->p)) {
        int is_int;
        int64_t iv;
        if (scan_number(s, &is_int, &iv)) return -1;
        rec_hole(s, start, 1, ROLE_INERT, 0);
        return 0;
    }
    return skip_value(s, depth);
}

/* choices[0].delta (SSE) or .message (body): depth 4. */
static int walk_message(scan_t *s, doc_t *d) {
    d->has_content = 0;
    rec_drop_role(s, ROLE_CONTENT);
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        if (KEY_IS(&k, "content") ? take_string(s, &d->has_content, &d->content, 5, ROLE_CONTENT)
                                  : skip_member(s, 5))
            return -1;
        r = next_member(s, '}');
    }
    return r;
}

static int walk_choice(scan_t *s, doc_t *d, int stream) {
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        if (stream ? KEY_IS(&k, "delta") : KEY_IS(&k, "message")) {
            if (*s->p == '{')
                r = walk_message(s, d);
            else {
                d->has_content = 0;
                rec_drop_role(s, ROLE_CONTENT);
                r = skip_value(s, 4);
            }
        } else if (KEY_IS(&k, "text")) {
            r = take_string(s, &d->has_text, &d->text, 4, ROLE_TEXT);
        } else {
            r = skip_member(s, 4);
        }
        if (r) return -1;
        r = next_member(s, '}');
    }
    return r;
}

static int walk_choices(scan_t *s, doc_t *d, int stream) {
    /* A repeated "choices" replaces the earlier one. */
    d->has_content = d->has_text = d->choices_empty = 0;
    rec_drop_role(s, ROLE_CONTENT);
    rec_drop_role(s, ROLE_TEXT);
    if (*s->p != '[') return skip_value(s, 2);
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        d->choices_empty = 1;
        return 0;
    }
    for (int idx = 0;; idx++) {
        skip_ws(s);
        if (s->p >= s->end) return -1;
        if (idx == 0 && *s->p == '{' ? walk_choice(s, d, stream) : skip_value(s, 3)) return -1;
        int r = next_member(s, ']');
        if (r <= 0) return r;
    }
}

/* usage.prompt_tokens_details (input_tokens_details) and .completion_tokens_details
 * (output_tokens_details): the one count read from each, at index i. depth: the object's. */
static int walk_details(scan_t *s, usage_t *u, int i, const char *name, size_t name_len,
                        unsigned depth) {
    u->ok &= (uint8_t)~U_BIT(i);
    rec_drop_role(s, ROLE_USAGE0 + i);
    if (*s->p != '{') return skip_value(s, depth);
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        if (key_is(&k, name, name_len)) {
            int ok;
            if (take_int(s, &ok, &u->v[i], depth + 1, ROLE_USAGE0 + i)) return -1;
            u->ok = (uint8_t)(ok ? u->ok | U_BIT(i) : u->ok & ~U_BIT(i));
        } else if (skip_member(s, depth + 1)) {
            return -1;
        }
        r = next_member(s, '}');
    }
    return r;
}

/* "usage" (Chat Completions names, or the Responses API's input/output names); depth: the
 * usage object's. */
static int walk_usage(scan_t *s, usage_t *u, unsigned depth) {
    memset(u, 0, sizeof(*u));
    for (int i = 0; i < U_COUNT; i++)
        rec_drop_role(s, ROLE_USAGE0 + i);
    u->has = *s->p == '{';
    if (!u->has) return skip_value(s, depth);
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        int i = KEY_IS(&k, "prompt_tokens") || KEY_IS(&k, "input_tokens")        ? U_PROMPT
                : KEY_IS(&k, "completion_tokens") || KEY_IS(&k, "output_tokens") ? U_COMPLETION
                : KEY_IS(&k, "total_tokens")                                     ? U_TOTAL
                : KEY_IS(&k, "prompt_tokens_details") || KEY_IS(&k, "input_tokens_details") ? -2
                : KEY_IS(&k, "completion_tokens_details") || KEY_IS(&k, "output_tokens_details")
                    ? -3
                    : -1;
        if (i >= 0) {
            int ok;
            u->seen |= (uint8_t)U_BIT(i);
            r = take_int(s, &ok, &u->v[i], depth + 1, ROLE_USAGE0 + i);
            u->ok = (uint8_t)(ok ? u->ok | U_BIT(i) : u->ok & ~U_BIT(i));
        } else if (i == -2)
            r = walk_details(s, u, U_CACHED, "cached_tokens", 13, depth + 1);
        else if (i == -3)
            r = walk_details(s, u, U_REASONING, "reasoning_tokens", 16, depth + 1);
        else
            r = skip_member(s, depth + 1);
        if (r) return -1;
        r = next_member(s, '}');
    }
    return r;
}

/* A Responses API event's "response" object (response.created ... response.completed): its
 * model and usage; the output it repeats was already streamed as deltas. Depth 2. */
static int walk_response(scan_t *s, doc_t *d) {
    d->has_rmodel = 0;
    memset(&d->rusage, 0, sizeof(d->rusage));
    d->has_response = *s->p == '{';
    if (!d->has_response) return skip_value(s, 2);
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        if (KEY_IS(&k, "model"))
            r = take_string(s, &d->has_rmodel, &d->rmodel, 3, ROLE_LITERAL);
        else if (KEY_IS(&k, "usage"))
            r = walk_usage(s, &d->rusage, 3);
        else
            r = skip_member(s, 3);
        if (r) return -1;
        r = next_member(s, '}');
    }
    return r;
}

/* Scans a whole document; 0 when it is a valid JSON object (then *d holds its fields). */
static int scan_doc(const char *buf, size_t len, int want, int stream, doc_t *d, rec_t *rec) {
    scan_t s = {(const unsigned char *)buf, (const unsigned char *)buf + len, rec};
    memset(d, 0, sizeof(*d));
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{') return -1;
    int r = open_object(&s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(&s, &k)) return -1;
        if (KEY_IS(&k, "model")) {
            r = take_string(&s, &d->has_model, &d->model, 2, ROLE_LITERAL);
        } else if (want == WANT_RESPONSE && KEY_IS(&k, "choices")) {
            r = walk_choices(&s, d, stream);
        } else if (want == WANT_RESPONSE && KEY_IS(&k, "usage")) {
            d->usage_null = *s.p == 'n';
            r = walk_usage(&s, &d->usage, 2);
        } else if (want == WANT_RESPONSE && KEY_IS(&k, "type")) {
            jstr_t type;
            int is_str;
            r = take_string(&s, &is_str, &type, 2, ROLE_LITERAL);
            d->is_text_delta = !r && is_str && KEY_IS(&type, "response.output_text.delta");
        } else if (want == WANT_RESPONSE && stream && KEY_IS(&k, "delta")) {
            r = take_string(&s, &d->has_delta, &d->delta, 2, ROLE_DELTA);
        } else if (want == WANT_RESPONSE && stream && KEY_IS(&k, "response")) {
            r = walk_response(&s, d);
        } else if (want == WANT_RESPONSE && !stream && KEY_IS(&k, "output")) {
            const unsigned char *at = s.p;
            d->output = NULL;
            r = skip_value(&s, 2);
            if (*at == '[') {
                d->output = (const char *)at;
                d->output_len = (size_t)(s.p - at);
            }
        } else if (want == WANT_REQUEST && KEY_IS(&k, "stream")) {
            d->stream = (size_t)(s.end - s.p) >= 4 && memcmp(s.p, "true", 4) == 0;
            r = skip_value(&s, 2);
        } else {
            r = skip_member(&s, 2);
        }
        if (r) return -1;
        r = next_member(&s, '}');
    }
    if (r < 0) return -1;
    skip_ws(&s);
    return s.p == s.end ? 0 : -1;
}

/* ---- templates: the fast path for a stream of same-shaped events ----
 *
 * The chunks of one stream differ in a few values only: the content string, sometimes an
 * "obfuscation" padding, a "created" or token counts. So the last event read in full is kept
 * as a template with the string and number values of the members the scanner walks marked as
 * holes (rec_hole). A new event that equals the template byte for byte outside the holes and
 * has a valid string (or number) in each hole is the template with some values replaced:
 * it is valid exactly when the template was, it has the same members on the same paths, and
 * its result is the template's with the holes' values. That is the scanner's result, found by
 * a comparison that runs at memcmp speed plus a scan of the holes that changed (usually the
 * content alone). There is no key search, so a key inside a string value cannot be mistaken
 * for a member. Anything else (another shape, a value changing type, a cut or damaged
 * document) goes to the scanner, which may make the event the new template. */

/* Bytes of a template outside its content and text (those are kept empty). A chunk is a few
 * hundred; a larger event is read by the scanner, which costs about the same per byte. */
#define TEMPLATE_CAP 4096

typedef struct {
    unsigned char *bytes;
    size_t len, cap; /* len 0: no template */
    hole_t holes[TEMPLATE_MAX_HOLES];
    unsigned n;
    doc_t doc; /* its fields: model points into bytes, content and text come from the holes */
} template_t;

static int elided(const hole_t *h) {
    return h->role == ROLE_CONTENT || h->role == ROLE_TEXT || h->role == ROLE_DELTA;
}

/* Makes the document just scanned into the template. Only documents with content or text
 * qualify: they are the stream's bulk, and a ping or the final usage chunk between them must
 * not evict the shape that will come again. */
static void template_learn(template_t *t, const char *buf, size_t len, const rec_t *rec,
                           const doc_t *d) {
    if (rec->lost || (!d->has_content && !d->has_text && !d->has_delta)) return;
    /* Content and text are read from their holes only (the template keeps them empty). */
    if ((d->has_content && rec->role_hole[ROLE_CONTENT] < 0) ||
        (d->has_text && rec->role_hole[ROLE_TEXT] < 0) ||
        (d->has_delta && rec->role_hole[ROLE_DELTA] < 0))
        return;
    /* A nested "response" (Responses API lifecycle events) is read by the scanner alone: its
     * model would need its own place in the template, and such events come once a stream. */
    if (d->has_response) return;
    size_t cut = 0;
    for (unsigned i = 0; i < rec->n; i++)
        if (elided(&rec->holes[i])) cut += rec->holes[i].end - rec->holes[i].start - 2;
    size_t tlen = len - cut;
    if (tlen > TEMPLATE_CAP) return;
    if (tlen > t->cap) {
        unsigned char *b = realloc(t->bytes, tlen);
        if (!b) {
            t->len = 0;
            return;
        }
        t->bytes = b;
        t->cap = tlen;
    }
    const unsigned char *src = (const unsigned char *)buf;
    size_t from = 0, to = 0, model_at = d->has_model ? (size_t)(d->model.p - buf) : 0;
    size_t model_to = model_at;
    for (unsigned i = 0; i < rec->n; i++) {
        hole_t h = rec->holes[i];
        size_t shift = from - to;
        if (d->has_model && model_at >= from && model_at < h.start) model_to = model_at - shift;
        if (elided(&h)) {
            memcpy(t->bytes + to, src + from, h.start + 1 - from);
            to += h.start + 1 - from;
            t->bytes[to++] = '"';
            from = h.end;
            h.start -= (uint32_t)shift;
            h.end = h.start + 2;
            h.esc = 0;
        } else {
            h.start -= (uint32_t)shift;
            h.end -= (uint32_t)shift;
        }
        t->holes[i] = h;
    }
    if (d->has_model && model_at >= from) model_to = model_at - (from - to);
    memcpy(t->bytes + to, src + from, len - from);
    t->len = tlen;
    t->n = rec->n;
    t->doc = *d;
    if (d->has_model) t->doc.model.p = (const char *)t->bytes + model_to;
    memset(&t->doc.content, 0, sizeof(t->doc.content));
    memset(&t->doc.text, 0, sizeof(t->doc.text));
    memset(&t->doc.delta, 0, sizeof(t->doc.delta));
}

/* Length of the common prefix of a and b (n bytes each at most). */
static size_t same_prefix(const unsigned char *a, const unsigned char *b, size_t n) {
    size_t i = 0;
#if defined(__SSE2__)
    for (; n - i >= 16; i += 16) {
        __m128i va = _mm_loadu_si128((const __m128i *)(const void *)(a + i));
        __m128i vb = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        unsigned diff = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(va, vb)) ^ 0xFFFFu;
        if (diff) return i + (size_t)__builtin_ctz(diff);
    }
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; n - i >= 8; i += 8) {
        uint64_t va, vb;
        memcpy(&va, a + i, 8);
        memcpy(&vb, b + i, 8);
        if (va != vb) return i + (size_t)__builtin_ctzll(va ^ vb) / 8;
    }
#endif
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* The hole at v (the event's copy of the template's hole h, same length) feeds d. */
static void hole_same(const hole_t *h, const unsigned char *v, doc_t *d) {
    jstr_t str = {(const char *)v + 1, h->end - h->start - 2u, h->esc};
    if (h->role == ROLE_CONTENT)
        d->content = str;
    else if (h->role == ROLE_TEXT)
        d->text = str;
    else if (h->role == ROLE_DELTA)
        d->delta = str;
    /* A usage count that did not change is already in d, and an inert value feeds nothing. */
}

/* 0 when the event is the template with holes replaced; then d holds its fields. */
static int template_match(const template_t *t, const char *buf, size_t len, doc_t *d) {
    const unsigned char *tb = t->bytes, *db = (const unsigned char *)buf;
    size_t pt = 0, pd = 0;
    unsigned hi = 0;
    memcpy(d, &t->doc, offsetof(doc_t, has_response));
    d->has_response = d->has_rmodel = 0;
    d->rusage.has = 0;
    d->output = NULL;
    for (;;) {
        size_t tl = t->len - pt, dl = len - pd;
        size_t m = same_prefix(tb + pt, db + pd, tl < dl ? tl : dl);
        size_t at = pt + m;                     /* template offset of the first difference */
        const unsigned char *ev = db + pd - pt; /* ev + template offset = event byte */
        /* Holes passed intact; a number only once the byte after it matched too, since "12"
         * is a prefix of "123". */
        while (hi < t->n && t->holes[hi].end + t->holes[hi].is_num <= at) {
            hole_same(&t->holes[hi], ev + t->holes[hi].start, d);
            hi++;
        }
        if (m == tl && m == dl) return hi == t->n ? 0 : -1;
        if (hi == t->n || at < t->holes[hi].start) return -1; /* outside the holes */
        const hole_t *h = &t->holes[hi];
        scan_t s = {ev + h->start, db + len, NULL};
        if (h->is_num) {
            int is_int;
            int64_t v;
            if (s.p >= s.end || (*s.p != '-' && !is_digit(*s.p)) || scan_number(&s, &is_int, &v))
                return -1;
            if (h->role >= ROLE_USAGE0) {
                if (!is_int) return -1;
                d->usage.v[h->role - ROLE_USAGE0] = v;
            }
        } else {
            jstr_t str;
            if (s.p >= s.end || *s.p != '"' || scan_string(&s, &str)) return -1;
            if (h->role == ROLE_CONTENT)
                d->content = str;
            else if (h->role == ROLE_TEXT)
                d->text = str;
            else if (h->role == ROLE_DELTA)
                d->delta = str;
        }
        pd = (size_t)(s.p - db);
        pt = h->end;
        hi++;
    }
}

/* ---- extractor ---- */

enum { KIND_NONE, KIND_SSE, KIND_JSON };

struct extract {
    int kind;
    int finished;
    sse_parser_t *sse;

    /* NUL-terminated for callers that hand it on as a C string; never holds a NUL itself
     * (\u0000 is malformed). */
    char *content;
    size_t content_len, content_cap;
    int has_content, content_full;

    char *model; /* NULL, or model_buf */
    char *model_buf;
    size_t model_cap;
    int has_usage;
    int usage_ok[U_COUNT];
    int64_t usage[U_COUNT];

    /* SSE: the stream's data: [DONE] came; the event just read was a usage-only chunk; who
     * wants the events' ends (extract_set_cut_cb). */
    int saw_done, event_flags; /* EXTRACT_EVENT_* of the event just read */
    extract_cut_cb cut_cb;
    void *cut_ud;

    char *body;
    size_t body_len, body_cap;
    int body_over;

    template_t tmpl;
    int no_template;
    size_t events, fast_events;
    /* Template misses in a row, and events left before the next try: a stream whose events
     * never share a shape (with logprobs, say) then costs the scanner and ~1/64 more. */
    unsigned miss_streak, backoff;
};

static void add_content(extract_t *x, const jstr_t *str) {
    x->has_content = 1;
    if (x->content_full || !str->n) return;
    size_t room = EXTRACT_CONTENT_CAP - x->content_len;
    size_t want = str->n < room ? str->n : room; /* decoded length <= raw length */
    if (want + 1 > x->content_cap - x->content_len) {
        size_t cap = x->content_cap ? x->content_cap : 1024;
        while (cap < x->content_len + want + 1)
            cap *= 2;
        if (cap > EXTRACT_CONTENT_CAP + 1) cap = EXTRACT_CONTENT_CAP + 1;
        char *n = realloc(x->content, cap);
        if (!n) {
            x->content_full = 1;
            return;
        }
        x->content = n;
        x->content_cap = cap;
    }
    int cut;
    x->content_len += decode_string(x->content + x->content_len, want, str, &cut);
    x->content[x->content_len] = '\0';
    if (cut) x->content_full = 1;
}

static char *dup_string(const jstr_t *str) {
    char *m = malloc(str->n + 1);
    if (!m) return NULL;
    int cut;
    size_t n = decode_string(m, str->n, str, &cut);
    m[n] = '\0';
    return m;
}

/* The model in x's own buffer, which a recycled extractor keeps. */
static void set_model(extract_t *x, const jstr_t *str) {
    if (str->n + 1 > x->model_cap) {
        char *m = realloc(x->model_buf, str->n + 1);
        if (!m) return;
        x->model_buf = m;
        x->model_cap = str->n + 1;
    }
    int cut;
    size_t n = decode_string(x->model_buf, str->n, str, &cut);
    x->model_buf[n] = '\0';
    x->model = x->model_buf;
}

/* A usage needs integer prompt and total counts, and a completion count unless there is none
 * (an embeddings reply). */
static int apply_usage(extract_t *x, const usage_t *u) {
    if (!u->has || !(u->ok & U_BIT(U_PROMPT)) || !(u->ok & U_BIT(U_TOTAL)) ||
        ((u->seen & ~u->ok) & U_BIT(U_COMPLETION)))
        return 0;
    x->has_usage = 1;
    for (int i = 0; i < U_COUNT; i++) {
        x->usage_ok[i] = (u->ok >> i) & 1;
        x->usage[i] = x->usage_ok[i] ? u->v[i] : 0;
    }
    return 1;
}

/* A Responses API content part: its text counts when its type is output_text. Depth 5. */
static void add_output_part(extract_t *x, scan_t *s) {
    jstr_t type = {0}, text = {0};
    int has_type = 0, has_text = 0;
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return;
        if (KEY_IS(&k, "type"))
            r = take_string(s, &has_type, &type, 6, ROLE_LITERAL);
        else if (KEY_IS(&k, "text"))
            r = take_string(s, &has_text, &text, 6, ROLE_LITERAL);
        else
            r = skip_value(s, 6);
        if (r) return;
        r = next_member(s, '}');
    }
    if (r == 0 && has_type && has_text && KEY_IS(&type, "output_text")) add_content(x, &text);
}

/* Walks a validated array of items (depth of the array given) calling fn on each object. */
static void each_object(extract_t *x, scan_t *s, unsigned depth,
                        void (*fn)(extract_t *, scan_t *)) {
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') return;
    for (;;) {
        skip_ws(s);
        if (s->p >= s->end) return;
        if (*s->p == '{')
            fn(x, s);
        else if (skip_value(s, depth + 1))
            return;
        if (next_member(s, ']') != 1) return;
    }
}

/* A Responses API output item (depth 3): the parts of its last "content" array. */
static void add_output_item(extract_t *x, scan_t *s) {
    const unsigned char *content = NULL;
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return;
        int is_content = KEY_IS(&k, "content");
        if (is_content) content = *s->p == '[' ? s->p : NULL;
        if (skip_value(s, 4)) return;
        r = next_member(s, '}');
    }
    if (r != 0 || !content) return;
    scan_t c = {content, s->end, NULL};
    each_object(x, &c, 4, add_output_part);
}

static void apply_doc(extract_t *x, const doc_t *d) {
    if (!x->model) {
        if (d->has_model && d->model.n)
            set_model(x, &d->model);
        else if (d->has_rmodel && d->rmodel.n)
            set_model(x, &d->rmodel);
    }
    if (d->has_content) {
        add_content(x, &d->content);
    } else if (d->has_text) {
        add_content(x, &d->text);
    } else if (d->is_text_delta && d->has_delta) {
        add_content(x, &d->delta);
    } else if (d->output) {
        scan_t s = {(const unsigned char *)d->output,
                    (const unsigned char *)d->output + d->output_len, NULL};
        each_object(x, &s, 2, add_output_item);
    }
    if (!(d->usage.has && apply_usage(x, &d->usage)) && d->rusage.has) apply_usage(x, &d->rusage);
}

/* Unicode's "maximal subpart" rule (as WHATWG decoders and Python's errors="replace"): the
 * length of the ill-formed sequence at p that one U+FFFD replaces. */
static size_t utf8_bad_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 1;
    size_t n = 1;
    for (size_t i = 0; i < need && p + n < end; i++, lo = 0x80, hi = 0xBF) {
        if (p[n] < lo || p[n] > hi) break;
        n++;
    }
    return n;
}

/* A copy of buf with each ill-formed UTF-8 sequence replaced by U+FFFD, so a body that is
 * valid JSON but for its encoding still gives its text and usage. NULL when buf is valid
 * UTF-8 (nothing to repair) or out of memory. Only the path of a document the scanner
 * refused pays for it. */
static char *utf8_repair(const char *buf, size_t len, size_t *out_len) {
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    char *out = NULL;
    size_t o = 0;
    while (p < end) {
        if (*p < 0x80) {
            if (out) out[o++] = (char)*p;
            p++;
            continue;
        }
        size_t n = utf8_seq(p, end);
        if (n) {
            if (out) memcpy(out + o, p, n), o += n;
            p += n;
            continue;
        }
        if (!out) { /* first bad byte: every byte becomes at most 3 */
            if (len > (SIZE_MAX - 1) / 3 || !(out = malloc(len * 3 + 1))) return NULL;
            o = (size_t)(p - (const unsigned char *)buf);
            memcpy(out, buf, o);
        }
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        p += utf8_bad_len(p, end);
    }
    *out_len = o;
    return out;
}

static int event_flags(int stream, const doc_t *d) {
    if (!stream) return 0;
    return (d->choices_empty && d->usage.has ? EXTRACT_EVENT_USAGE_ONLY : 0) |
           (d->usage_null ? EXTRACT_EVENT_USAGE_NULL : 0);
}

/* Scans a document and applies what it says, also when the scanner refused it for its
 * encoding alone (then from a repaired copy). 0 when buf itself was valid: *d holds it. */
static int scan_apply(extract_t *x, const char *buf, size_t len, int stream, rec_t *rec, doc_t *d) {
    if (scan_doc(buf, len, WANT_RESPONSE, stream, d, rec) == 0) {
        if (x->cut_cb) x->event_flags = event_flags(stream, d);
        apply_doc(x, d);
        return 0;
    }
    size_t n;
    char *fixed = utf8_repair(buf, len, &n);
    if (!fixed) return -1;
    if (scan_doc(fixed, n, WANT_RESPONSE, stream, d, NULL) == 0) {
        if (x->cut_cb) x->event_flags = event_flags(stream, d);
        apply_doc(x, d);
    }
    free(fixed);
    return -1; /* not one to learn from */
}

static void on_event(void *ud, const char *event, size_t event_len, const char *data,
                     size_t data_len) {
    extract_t *x = ud;
    doc_t d;
    x->event_flags = 0;
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        x->saw_done = 1;
        return;
    }
    x->events++;
    int tried = x->tmpl.len && !x->backoff;
    if (tried && template_match(&x->tmpl, data, data_len, &d) == 0) {
        x->miss_streak = 0;
        x->fast_events++;
        if (x->cut_cb) x->event_flags = event_flags(1, &d);
        apply_doc(x, &d);
        return;
    }
    if (!tried && x->backoff) x->backoff--;
    int record = !x->no_template && !x->backoff;
    rec_t rec;
    rec.base = (const unsigned char *)data;
    rec.n = 0;
    rec.lost = 0;
    for (int i = 0; i < ROLE_COUNT; i++)
        rec.role_hole[i] = -1;
    if (scan_apply(x, data, data_len, 1, record ? &rec : NULL, &d) != 0) return;
    /* A damaged event says nothing about the stream's shape; a valid one that missed does. */
    if (tried && ++x->miss_streak >= 4) {
        unsigned k = x->miss_streak - 4;
        x->backoff = k >= 6 ? 64u : 2u << k;
    }
    /* While backing off, only the event before the next try is learned. */
    if (record && !x->backoff) template_learn(&x->tmpl, data, data_len, &rec, &d);
}

static void on_boundary(void *ud, size_t end) {
    extract_t *x = ud;
    int flags = x->event_flags;
    x->event_flags = 0;
    x->cut_cb(x->cut_ud, end, flags);
}

/* "type/subtype" followed by the end or parameters, ASCII case-insensitive. */
static int media_type_is(const char *ct, size_t len, const char *type) {
    size_t n = strlen(type);
    while (len && (*ct == ' ' || *ct == '\t')) {
        ct++;
        len--;
    }
    if (len < n || strncasecmp(ct, type, n) != 0) return 0;
    return len == n || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

/* Sets x up for a response with this Content-Type. */
static void extract_start(extract_t *x, const char *content_type, size_t content_type_len) {
    if (!content_type) return;
    if (media_type_is(content_type, content_type_len, "text/event-stream")) {
        x->sse = sse_new(on_event, x, EXTRACT_MAX_EVENT);
        if (x->sse) x->kind = KIND_SSE;
    } else if (media_type_is(content_type, content_type_len, "application/json")) {
        x->kind = KIND_JSON;
    }
}

extract_t *extract_new(const char *content_type, size_t content_type_len) {
    extract_t *x = calloc(1, sizeof(*x));
    if (!x) return NULL;
    extract_start(x, content_type, content_type_len);
    return x;
}

void extract_feed(extract_t *x, const char *data, size_t len) {
    if (!x || x->finished || !len) return;
    if (x->kind == KIND_SSE) {
        sse_feed(x->sse, data, len);
        return;
    }
    if (x->kind != KIND_JSON || x->body_over) return;
    if (len > EXTRACT_BODY_CAP - x->body_len) {
        /* Half a body says nothing reliable: give up on it and free what was kept. */
        x->body_over = 1;
        free(x->body);
        x->body = NULL;
        x->body_len = x->body_cap = 0;
        return;
    }
    if (len > x->body_cap - x->body_len) {
        size_t cap = x->body_cap ? x->body_cap : 4096;
        while (cap < x->body_len + len)
            cap *= 2;
        if (cap > EXTRACT_BODY_CAP) cap = EXTRACT_BODY_CAP;
        char *n = realloc(x->body, cap);
        if (!n) {
            x->body_over = 1;
            free(x->body);
            x->body = NULL;
            x->body_len = x->body_cap = 0;
            return;
        }
        x->body = n;
        x->body_cap = cap;
    }
    memcpy(x->body + x->body_len, data, len);
    x->body_len += len;
}

void extract_finish(extract_t *x) {
    if (!x || x->finished) return;
    x->finished = 1;
    if (x->kind == KIND_SSE) {
        sse_finish(x->sse);
        sse_free(x->sse);
        x->sse = NULL;
        free(x->tmpl.bytes);
        memset(&x->tmpl, 0, sizeof(x->tmpl));
    } else if (x->kind == KIND_JSON && !x->body_over && x->body) {
        doc_t d;
        scan_apply(x, x->body, x->body_len, 0, NULL, &d);
    }
    /* The buffer stays for a recycled extractor (extract_pool_put trims a big one). */
    x->body_len = 0;
}

void extract_free(extract_t *x) {
    if (!x) return;
    sse_free(x->sse);
    free(x->tmpl.bytes);
    free(x->body);
    free(x->content);
    free(x->model_buf);
    free(x);
}

/* ---- recycling ---- */

#define EXTRACT_POOL_MAX 32
/* Buffer memory a recycled extractor keeps; bigger ones are freed. At most about 1 MiB held
 * in all, whatever the responses were. */
#define EXTRACT_KEEP (16 * 1024)

extract_t *extract_pool_get(extract_pool_t *pool, const char *content_type,
                            size_t content_type_len) {
    extract_t *x = pool->free;
    if (!x) return extract_new(content_type, content_type_len);
    pool->free = *(extract_t **)x; /* the link lives in the first bytes while free */
    pool->n_free--;
    char *content = x->content, *body = x->body, *model = x->model_buf;
    size_t content_cap = x->content_cap, body_cap = x->body_cap, model_cap = x->model_cap;
    memset(x, 0, sizeof(*x));
    x->content = content;
    x->content_cap = content_cap;
    x->body = body;
    x->body_cap = body_cap;
    x->model_buf = model;
    x->model_cap = model_cap;
    extract_start(x, content_type, content_type_len);
    return x;
}

void extract_pool_put(extract_pool_t *pool, extract_t *x) {
    if (!x) return;
    if (pool->n_free >= EXTRACT_POOL_MAX) {
        extract_free(x);
        return;
    }
    sse_free(x->sse);
    x->sse = NULL;
    free(x->tmpl.bytes);
    x->tmpl.bytes = NULL;
    if (x->content_cap > EXTRACT_KEEP) {
        free(x->content);
        x->content = NULL;
        x->content_cap = 0;
    }
    if (x->body_cap > EXTRACT_KEEP) {
        free(x->body);
        x->body = NULL;
        x->body_cap = 0;
    }
    _Static_assert(offsetof(extract_t, kind) == 0, "the free link overlays kind");
    *(extract_t **)x = pool->free;
    pool->free = x;
    pool->n_free++;
}

void extract_pool_release(extract_pool_t *pool) {
    while (pool->free) {
        extract_t *x = pool->free;
        pool->free = *(extract_t **)x;
        extract_free(x);
    }
    pool->n_free = 0;
}

const char *extract_content(const extract_t *x, size_t *len) {
    if (len) *len = x && x->has_content ? x->content_len : 0;
    if (!x || !x->has_content) return NULL;
    return x->content ? x->content : "";
}

const char *extract_model(const extract_t *x) {
    return x ? x->model : NULL;
}

int extract_usage(const extract_t *x, int64_t *prompt, int64_t *completion, int64_t *total) {
    if (!x || !x->has_usage) return 0;
    if (prompt) *prompt = x->usage[U_PROMPT];
    if (completion) *completion = x->usage[U_COMPLETION];
    if (total) *total = x->usage[U_TOTAL];
    return 1;
}

int extract_json_find_member(const char *buf, size_t len, size_t at, unsigned depth,
                             const char *key, extract_json_member_t *out) {
    memset(out, 0, sizeof(*out));
    if (at >= len || buf[at] != '{' || depth < 1 || depth >= JSON_MAX_DEPTH) return -1;
    const unsigned char *base = (const unsigned char *)buf;
    scan_t s = {base + at, base + len, NULL};
    size_t key_len = strlen(key);
    int r = open_object(&s);
    out->has_members = r == 1;
    const unsigned char *comma = NULL; /* before the member being read, if any */
    int last = 0;                      /* the member found is the one just read */
    while (r == 1) {
        jstr_t k;
        skip_ws(&s);
        const unsigned char *key_at = s.p;
        if (scan_key(&s, &k)) return -1;
        const unsigned char *v = s.p;
        if (skip_value(&s, depth + 1)) return -1;
        last = key_is(&k, key, key_len);
        if (last) {
            out->found = 1;
            out->value_start = (size_t)(v - base);
            out->value_end = (size_t)(s.p - base);
            out->member_start = (size_t)((comma ? comma : key_at) - base);
            out->member_end = out->value_end;
        }
        skip_ws(&s);
        comma = s.p;
        r = next_member(&s, '}');
        /* A first member goes with the comma after it, so that what is left stays JSON. */
        if (last && r == 1 && out->member_start == (size_t)(key_at - base))
            out->member_end = (size_t)(s.p - base);
    }
    if (r < 0) return -1;
    out->close = (size_t)(s.p - base) - 1;
    return 0;
}

int extract_usage_details(const extract_t *x, int64_t *cached, int64_t *reasoning) {
    if (!x || !x->has_usage) return 0;
    int has = 0;
    if (x->usage_ok[U_CACHED]) {
        has |= EXTRACT_HAS_CACHED;
        if (cached) *cached = x->usage[U_CACHED];
    }
    if (x->usage_ok[U_REASONING]) {
        has |= EXTRACT_HAS_REASONING;
        if (reasoning) *reasoning = x->usage[U_REASONING];
    }
    return has;
}

int extract_is_sse(const extract_t *x) {
    return x && x->kind == KIND_SSE;
}

int extract_saw_done(const extract_t *x) {
    return x && x->saw_done;
}

int extract_at_event_boundary(const extract_t *x) {
    return !x || !x->sse || sse_at_boundary(x->sse);
}

void extract_set_cut_cb(extract_t *x, extract_cut_cb cb, void *ud) {
    if (!x) return;
    x->cut_cb = cb;
    x->cut_ud = ud;
    /* Only then: a stream nobody cuts pays nothing per event for it. */
    sse_set_boundary_cb(x->sse, cb ? on_boundary : NULL);
}

void extract_request_fields(const char *body, size_t len, char **model, int *stream) {
    doc_t d;
    if (model) *model = NULL;
    if (stream) *stream = 0;
    if (!body || scan_doc(body, len, WANT_REQUEST, 0, &d, NULL) != 0) return;
    if (model && d.has_model) *model = dup_string(&d.model);
    if (stream) *stream = d.stream;
}

void extract_request_fields_arena(const char *body, size_t len, arena_t *arena, char **model,
                                  int *stream) {
    doc_t d;
    if (model) *model = NULL;
    if (stream) *stream = 0;
    if (!body || scan_doc(body, len, WANT_REQUEST, 0, &d, NULL) != 0) return;
    if (model && d.has_model) {
        char *m = arena_alloc(arena, d.model.n + 1);
        if (m) {
            int cut;
            m[decode_string(m, d.model.n, &d.model, &cut)] = '\0';
            *model = m;
        }
    }
    if (stream) *stream = d.stream;
}

void extract_set_fast_path(extract_t *x, int on) {
    if (!x) return;
    x->no_template = !on;
    if (!on) x->tmpl.len = 0;
}

size_t extract_fast_events(const extract_t *x, size_t *events) {
    if (events) *events = x ? x->events : 0;
    return x ? x->fast_events : 0;
}
