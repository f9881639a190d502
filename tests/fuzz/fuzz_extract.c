/* fuzz_extract.c: libFuzzer target for the extractors. The input goes in as an SSE stream
 * (whole and cut at a data-derived point: same results), as a JSON body and as a request
 * body; wherever it is one JSON document, the results must equal what jansson makes of it,
 * and as a stream the SSE fast path must find what the full scanner finds (fuzz_fast.c goes
 * further there).
 * The scanner's one allowed difference: jansson skips a NUL byte right after a number or a
 * literal, the scanner calls that malformed, so with a NUL in the input the scanner may find
 * nothing where jansson finds something, never anything else.
 * A document refused for invalid UTF-8 alone is read with each ill-formed sequence replaced
 * by U+FFFD (Unicode's maximal subparts), as jansson reads the repaired copy. A usage object
 * that names a count twice (prompt_tokens and input_tokens, say) is not compared: which one
 * wins depends on their order, which jansson does not keep for distinct keys. */
#include "route/extract.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *content; /* NULL: none */
    size_t content_len;
    char *model;
    int has_usage;
    int64_t u[5];        /* prompt, completion, total, cached, reasoning */
    int details;         /* EXTRACT_HAS_CACHED | EXTRACT_HAS_REASONING */
    int usage_ambiguous; /* reference only: do not compare the usage */
} result_t;

static void result_free(result_t *r) {
    free(r->content);
    free(r->model);
}

static int result_eq(const result_t *a, const result_t *b) {
    if (!a->content != !b->content || a->content_len != b->content_len) return 0;
    if (a->content && memcmp(a->content, b->content, a->content_len) != 0) return 0;
    if (!a->model != !b->model || (a->model && strcmp(a->model, b->model) != 0)) return 0;
    if (a->usage_ambiguous || b->usage_ambiguous) return 1;
    if (a->has_usage != b->has_usage || a->details != b->details) return 0;
    return !a->has_usage || memcmp(a->u, b->u, sizeof(a->u)) == 0;
}

static int result_empty(const result_t *r) {
    return !r->content && !r->model && !r->has_usage && !r->usage_ambiguous;
}

static char *dup_bytes(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) abort();
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static result_t run_mode(const char *ct, const char *body, size_t len, size_t cut, int fast) {
    result_t r = {0};
    extract_t *x = extract_new(ct, strlen(ct));
    if (!x) abort();
    extract_set_fast_path(x, fast);
    extract_feed(x, body, cut);
    extract_feed(x, body + cut, len - cut);
    extract_finish(x);
    size_t n;
    const char *c = extract_content(x, &n);
    if (c) {
        if (n > EXTRACT_CONTENT_CAP || c[n] != '\0') abort();
        r.content = dup_bytes(c, n);
        r.content_len = n;
    }
    const char *m = extract_model(x);
    if (m) {
        if (!*m) abort(); /* an empty model is no model */
        r.model = dup_bytes(m, strlen(m));
    }
    r.has_usage = extract_usage(x, &r.u[0], &r.u[1], &r.u[2]);
    r.details = extract_usage_details(x, &r.u[3], &r.u[4]);
    extract_free(x);
    return r;
}

static result_t run(const char *ct, const char *body, size_t len, size_t cut) {
    return run_mode(ct, body, len, cut, 1);
}

/* One of two names for a count (Chat Completions, Responses API); -1 when both are there. */
static int alias(json_t *o, const char *a, const char *b, json_t **out) {
    json_t *x = json_object_get(o, a), *y = json_object_get(o, b);
    *out = x ? x : y;
    return x && y ? -1 : 0;
}

/* A usage object into r: 1 when it counts (integer prompt and total, completion integer or
 * absent), 0 when not, -1 when it names a count twice. */
static int ref_usage(json_t *u, result_t *r) {
    if (!json_is_object(u)) return 0;
    json_t *p, *c, *t = json_object_get(u, "total_tokens"), *pd, *cd;
    if (alias(u, "prompt_tokens", "input_tokens", &p) ||
        alias(u, "completion_tokens", "output_tokens", &c) ||
        alias(u, "prompt_tokens_details", "input_tokens_details", &pd) ||
        alias(u, "completion_tokens_details", "output_tokens_details", &cd))
        return -1;
    if (!json_is_integer(p) || !json_is_integer(t) || (c && !json_is_integer(c))) return 0;
    r->has_usage = 1;
    r->u[0] = json_integer_value(p);
    r->u[1] = c ? json_integer_value(c) : 0;
    r->u[2] = json_integer_value(t);
    json_t *ct = json_object_get(pd, "cached_tokens"),
           *rt = json_object_get(cd, "reasoning_tokens");
    if (json_is_object(pd) && json_is_integer(ct)) {
        r->details |= EXTRACT_HAS_CACHED;
        r->u[3] = json_integer_value(ct);
    }
    if (json_is_object(cd) && json_is_integer(rt)) {
        r->details |= EXTRACT_HAS_REASONING;
        r->u[4] = json_integer_value(rt);
    }
    return 1;
}

static void append(result_t *r, const char *s, size_t n) {
    char *c = realloc(r->content, r->content_len + n + 1);
    if (!c) abort();
    memcpy(c + r->content_len, s, n);
    r->content = c;
    r->content_len += n;
    c[r->content_len] = '\0';
}

/* The Responses API body's output_text parts, in order. */
static void ref_output(json_t *output, result_t *r) {
    size_t i, k;
    json_t *item, *part;
    json_array_foreach(output, i, item) {
        json_t *content = json_object_get(item, "content");
        if (!json_is_object(item) || !json_is_array(content)) continue;
        json_array_foreach(content, k, part) {
            json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
            if (json_is_object(part) && json_is_string(type) &&
                strcmp(json_string_value(type), "output_text") == 0 &&
                json_string_length(type) == 11 && json_is_string(text))
                append(r, json_string_value(text), json_string_length(text));
        }
    }
}

/* Unicode's maximal-subpart replacement, written apart from extract.c's: the expected
 * continuation range after each lead byte (Table 3-7). */
static char *repair_utf8(const char *s, size_t n, size_t *out_n) {
    char *o = malloc(n * 3 + 1);
    if (!o) abort();
    size_t w = 0, i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int need = c < 0x80                 ? 0
                   : c >= 0xC2 && c <= 0xDF ? 1
                   : c >= 0xE0 && c <= 0xEF ? 2
                   : c >= 0xF0 && c <= 0xF4 ? 3
                                            : -1;
        size_t ok = 1;
        if (need > 0) {
            for (int k = 1; k <= need && i + k < n; k++) {
                unsigned char d = (unsigned char)s[i + k];
                unsigned lo = 0x80, hi = 0xBF;
                if (k == 1 && c == 0xE0) lo = 0xA0;
                if (k == 1 && c == 0xED) hi = 0x9F;
                if (k == 1 && c == 0xF0) lo = 0x90;
                if (k == 1 && c == 0xF4) hi = 0x8F;
                if (d < lo || d > hi) break;
                ok++;
            }
        }
        if (need >= 0 && ok == (size_t)need + 1) {
            memcpy(o + w, s + i, ok);
            w += ok;
        } else {
            memcpy(o + w, "\xEF\xBF\xBD", 3);
            w += 3;
        }
        i += need < 0 ? 1 : ok;
    }
    *out_n = w;
    return o;
}

/* The rules of extract.h applied to one document with jansson. */
static result_t reference(const char *doc, size_t len, const char *msg_key) {
    result_t r = {0};
    int stream = strcmp(msg_key, "delta") == 0;
    json_t *root = json_loadb(doc, len, 0, NULL);
    if (!root) {
        size_t n;
        char *fixed = repair_utf8(doc, len, &n);
        if (n != len || memcmp(fixed, doc, len) != 0) root = json_loadb(fixed, n, 0, NULL);
        free(fixed);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return r;
    }
    json_t *m = json_object_get(root, "model");
    json_t *resp = stream ? json_object_get(root, "response") : NULL;
    if (!json_is_object(resp)) resp = NULL;
    if (!(json_is_string(m) && json_string_length(m))) m = json_object_get(resp, "model");
    if (json_is_string(m) && json_string_length(m))
        r.model = dup_bytes(json_string_value(m), json_string_length(m));
    json_t *c0 = json_array_get(json_object_get(root, "choices"), 0);
    json_t *c = NULL;
    if (json_is_object(c0)) {
        c = json_object_get(json_object_get(c0, msg_key), "content");
        if (!json_is_string(c)) c = json_object_get(c0, "text");
        if (!json_is_string(c)) c = NULL;
    }
    json_t *type = json_object_get(root, "type"), *delta = json_object_get(root, "delta");
    json_t *output = json_object_get(root, "output");
    if (c) {
        r.content = dup_bytes(json_string_value(c), json_string_length(c));
        r.content_len = json_string_length(c);
    } else if (stream && json_is_string(type) && json_is_string(delta) &&
               json_string_length(type) == 26 &&
               strcmp(json_string_value(type), "response.output_text.delta") == 0) {
        r.content = dup_bytes(json_string_value(delta), json_string_length(delta));
        r.content_len = json_string_length(delta);
    } else if (!stream && json_is_array(output)) {
        ref_output(output, &r);
    }
    int u = ref_usage(json_object_get(root, "usage"), &r);
    if (u == 0 && resp) u = ref_usage(json_object_get(resp, "usage"), &r);
    if (u < 0) r.usage_ambiguous = 1;
    json_decref(root);
    return r;
}

static void agree(const result_t *scanner, const result_t *ref, int has_nul) {
    if (result_eq(scanner, ref)) return;
    if (has_nul && result_empty(scanner)) return;
    abort();
}

static void check_request(const char *body, size_t len, int has_nul) {
    char *model;
    int stream;
    extract_request_fields(body, len, &model, &stream);
    json_t *root = json_loadb(body, len, 0, NULL);
    const char *rm = NULL;
    int rs = 0;
    size_t rm_len = 0;
    if (json_is_object(root)) {
        json_t *m = json_object_get(root, "model");
        if (json_is_string(m)) {
            rm = json_string_value(m);
            rm_len = json_string_length(m);
        }
        rs = json_is_true(json_object_get(root, "stream"));
    }
    int eq = stream == rs && !model == !rm &&
             (!model || (strlen(model) == rm_len && memcmp(model, rm, rm_len) == 0));
    if (!eq && !(has_nul && !model && !stream)) abort();
    json_decref(root);
    free(model);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *in = (const char *)data;
    size_t cut = size ? data[0] * size / 255 : 0;
    int has_nul = memchr(in, '\0', size) != NULL;

    /* The raw input as a stream: cutting it must not matter, nor the fast path (the full
     * scanner on every event must find the same). */
    result_t a = run("text/event-stream", in, size, 0);
    result_t b = run("text/event-stream", in, size, cut);
    if (!result_eq(&a, &b)) abort();
    result_free(&b);
    b = run_mode("text/event-stream", in, size, cut, 0);
    if (!result_eq(&a, &b)) abort();
    result_free(&a);
    result_free(&b);

    /* The raw input as a JSON body (small enough that the content cap cannot cut it). */
    a = run("application/json; charset=utf-8", in, size, cut);
    if (size <= EXTRACT_CONTENT_CAP) {
        b = reference(in, size, "message");
        agree(&a, &b, has_nul);
        result_free(&b);
    }
    result_free(&a);

    /* The input as the data of one event: line breaks become data lines, which the framer
     * joins with '\n', so the document compared is the input with its line ends as '\n'. */
    if (size <= 65536) {
        char *doc = malloc(size + 1), *sse = malloc(size * 7 + 16);
        if (!doc || !sse) abort();
        size_t dn = 0, sn = 0;
        memcpy(sse, "data: ", 6);
        sn = 6;
        for (size_t i = 0; i < size; i++) {
            char c = in[i];
            if (c == '\r' || c == '\n') {
                if (c == '\r' && i + 1 < size && in[i + 1] == '\n') i++;
                doc[dn++] = '\n';
                memcpy(sse + sn, "\ndata: ", 7);
                sn += 7;
            } else {
                doc[dn++] = c;
                sse[sn++] = c;
            }
        }
        memcpy(sse + sn, "\n\n", 2);
        sn += 2;
        a = run("text/event-stream", sse, sn, cut < sn ? cut : sn);
        b = reference(doc, dn, "delta");
        agree(&a, &b, has_nul);
        result_free(&a);
        result_free(&b);
        free(doc);
        free(sse);
    }

    /* Request fields, of the input and of the input as a member value, where its validity
     * shows through the model next to it. */
    check_request(in, size, has_nul);
    static const char head[] = "{\"model\":\"m\",\"x\":";
    char *wrapped = malloc(sizeof(head) + size + 1);
    if (!wrapped) abort();
    memcpy(wrapped, head, sizeof(head) - 1);
    memcpy(wrapped + sizeof(head) - 1, in, size);
    wrapped[sizeof(head) - 1 + size] = '}';
    check_request(wrapped, sizeof(head) + size, has_nul);
    free(wrapped);
    return 0;
}
