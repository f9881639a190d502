/* extract.c: owns what the proxy learns from a body it forwards: assistant text, model and
 * token usage of a response (text/event-stream events or an application/json body), and the
 * "model"/"stream" of a request body. It must never block or fail the stream it watches:
 * malformed input is skipped, memory stays bounded (content cap, body cap, event cap), and
 * no allocation happens per SSE event once the buffers have grown.
 *
 * JSON is read with a validating single-pass scanner instead of jansson, by measurement
 * (tests/bench/bench_extract.c): on a realistic chat.completion.chunk stream jansson costs
 * ~4 us per event (~60 MiB/s; it builds and frees a tree per event), the scanner ~0.26 us
 * (~1 GiB/s) and copies nothing but the fields it keeps; a 1 MiB body takes 11 ms vs 1.4 ms
 * of event loop time. The scanner accepts exactly the documents json_loadb(buf, len, 0)
 * accepts (same UTF-8, escape, \u0000, number range and 2048-level depth rules; duplicate
 * keys: the last wins), with one deliberate difference: jansson skips a NUL byte right after
 * a number or a literal, here that is malformed.
 * tests/fuzz/fuzz_extract.c checks the equivalence against jansson. */
#include "route/extract.h"
#include "route/sse.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* jansson's JSON_PARSER_MAX_DEPTH: it rejects deeper documents, so must we. */
#define JSON_MAX_DEPTH 2048
/* The largest body kept for parsing; the proxy refuses bigger request bodies anyway. */
#define EXTRACT_BODY_CAP (32u * 1024 * 1024)
/* One chat.completion.chunk is a few hundred bytes; anything near this is not one. */
#define EXTRACT_MAX_EVENT (4u * 1024 * 1024)

/* ---- scanner ---- */

typedef struct {
    const unsigned char *p, *end;
} scan_t;

/* The raw text between a string's quotes, validated; esc: it has backslash escapes. */
typedef struct {
    const char *p;
    size_t n;
    int esc;
} jstr_t;

/* What one document says, JSON semantics (a later duplicate key replaces an earlier one). */
typedef struct {
    int has_model, has_content, has_text, has_usage, stream;
    jstr_t model, content, text;
    int usage_ok[3];
    int64_t usage[3];
} doc_t;

enum { WANT_RESPONSE = 1, WANT_REQUEST = 2 };

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

static int take_string(scan_t *s, int *has, jstr_t *out, unsigned depth) {
    if (*s->p == '"') {
        *has = 1;
        return scan_string(s, out);
    }
    *has = 0;
    return skip_value(s, depth);
}

static int take_int(scan_t *s, int *ok, int64_t *out, unsigned depth) {
    *ok = 0;
    if (*s->p == '-' || is_digit(*s->p)) {
        int is_int;
        if (scan_number(s, &is_int, out)) return -1;
        *ok = is_int;
        return 0;
    }
    return skip_value(s, depth);
}

/* choices[0].delta (SSE) or .message (body): depth 4. */
static int walk_message(scan_t *s, doc_t *d) {
    d->has_content = 0;
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        if (KEY_IS(&k, "content") ? take_string(s, &d->has_content, &d->content, 5)
                                  : skip_value(s, 5))
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
                r = skip_value(s, 4);
            }
        } else if (KEY_IS(&k, "text")) {
            r = take_string(s, &d->has_text, &d->text, 4);
        } else {
            r = skip_value(s, 4);
        }
        if (r) return -1;
        r = next_member(s, '}');
    }
    return r;
}

static int walk_choices(scan_t *s, doc_t *d, int stream) {
    /* A repeated "choices" replaces the earlier one. */
    d->has_content = d->has_text = 0;
    if (*s->p != '[') return skip_value(s, 2);
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
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

static int walk_usage(scan_t *s, doc_t *d) {
    memset(d->usage_ok, 0, sizeof(d->usage_ok));
    d->has_usage = *s->p == '{';
    if (!d->has_usage) return skip_value(s, 2);
    int r = open_object(s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(s, &k)) return -1;
        int i = KEY_IS(&k, "prompt_tokens")       ? 0
                : KEY_IS(&k, "completion_tokens") ? 1
                : KEY_IS(&k, "total_tokens")      ? 2
                                                  : -1;
        if (i >= 0 ? take_int(s, &d->usage_ok[i], &d->usage[i], 3) : skip_value(s, 3)) return -1;
        r = next_member(s, '}');
    }
    return r;
}

/* Scans a whole document; 0 when it is a valid JSON object (then *d holds its fields). */
static int scan_doc(const char *buf, size_t len, int want, int stream, doc_t *d) {
    scan_t s = {(const unsigned char *)buf, (const unsigned char *)buf + len};
    memset(d, 0, sizeof(*d));
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{') return -1;
    int r = open_object(&s);
    while (r == 1) {
        jstr_t k;
        if (scan_key(&s, &k)) return -1;
        if (KEY_IS(&k, "model")) {
            r = take_string(&s, &d->has_model, &d->model, 2);
        } else if (want == WANT_RESPONSE && KEY_IS(&k, "choices")) {
            r = walk_choices(&s, d, stream);
        } else if (want == WANT_RESPONSE && KEY_IS(&k, "usage")) {
            r = walk_usage(&s, d);
        } else if (want == WANT_REQUEST && KEY_IS(&k, "stream")) {
            d->stream = (size_t)(s.end - s.p) >= 4 && memcmp(s.p, "true", 4) == 0;
            r = skip_value(&s, 2);
        } else {
            r = skip_value(&s, 2);
        }
        if (r) return -1;
        r = next_member(&s, '}');
    }
    if (r < 0) return -1;
    skip_ws(&s);
    return s.p == s.end ? 0 : -1;
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

    char *model;
    int has_usage;
    int64_t usage[3];

    char *body;
    size_t body_len, body_cap;
    int body_over;
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

static void apply_doc(extract_t *x, const doc_t *d) {
    if (!x->model && d->has_model && d->model.n) x->model = dup_string(&d->model);
    if (d->has_content)
        add_content(x, &d->content);
    else if (d->has_text)
        add_content(x, &d->text);
    if (d->has_usage && d->usage_ok[0] && d->usage_ok[1] && d->usage_ok[2]) {
        x->has_usage = 1;
        memcpy(x->usage, d->usage, sizeof(x->usage));
    }
}

static void on_event(void *ud, const char *event, size_t event_len, const char *data,
                     size_t data_len) {
    extract_t *x = ud;
    doc_t d;
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) return;
    if (scan_doc(data, data_len, WANT_RESPONSE, 1, &d) == 0) apply_doc(x, &d);
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

extract_t *extract_new(const char *content_type, size_t content_type_len) {
    extract_t *x = calloc(1, sizeof(*x));
    if (!x) return NULL;
    if (!content_type) return x;
    if (media_type_is(content_type, content_type_len, "text/event-stream")) {
        x->sse = sse_new(on_event, x, EXTRACT_MAX_EVENT);
        if (x->sse) x->kind = KIND_SSE;
    } else if (media_type_is(content_type, content_type_len, "application/json")) {
        x->kind = KIND_JSON;
    }
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
    } else if (x->kind == KIND_JSON && !x->body_over && x->body) {
        doc_t d;
        if (scan_doc(x->body, x->body_len, WANT_RESPONSE, 0, &d) == 0) apply_doc(x, &d);
    }
    free(x->body);
    x->body = NULL;
    x->body_len = x->body_cap = 0;
}

void extract_free(extract_t *x) {
    if (!x) return;
    sse_free(x->sse);
    free(x->body);
    free(x->content);
    free(x->model);
    free(x);
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
    if (prompt) *prompt = x->usage[0];
    if (completion) *completion = x->usage[1];
    if (total) *total = x->usage[2];
    return 1;
}

void extract_request_fields(const char *body, size_t len, char **model, int *stream) {
    doc_t d;
    if (model) *model = NULL;
    if (stream) *stream = 0;
    if (!body || scan_doc(body, len, WANT_REQUEST, 0, &d) != 0) return;
    if (model && d.has_model) *model = dup_string(&d.model);
    if (stream) *stream = d.stream;
}
