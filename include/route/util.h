/* util.h: small shared helpers: time text in the Go program's formats, UUIDs (with a per-loop
 * random source for ids), request-scoped arenas (with a per-loop block pool), growable byte
 * buffers, number text without printf, logging. Nothing here knows about HTTP, SQLite or Lua. */
#ifndef ROUTE_UTIL_H
#define ROUTE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- time ---- */
/* Wall clock, nanoseconds since the Unix epoch. */
int64_t util_now_wall_ns(void);
/* Monotonic clock, nanoseconds. */
int64_t util_now_mono_ns(void);
/* The Go program's database text: "2023-08-10 13:32:51.123456789+08:00" in local time,
 * fraction trimmed of trailing zeros (omitted when zero), like Go's
 * "2006-01-02 15:04:05.999999999-07:00". Returns the length written (buf >= 40 bytes). */
size_t util_format_db_time(char *buf, size_t cap, int64_t wall_ns);
/* RFC 3339 with nanoseconds, as Go's time.Time marshals to JSON:
 * "2023-08-10T13:32:51.123456789+08:00" ("Z" for UTC offset 0). */
size_t util_format_json_time(char *buf, size_t cap, int64_t wall_ns);
/* Parses the database text forms (space or 'T' separator, optional fraction, offset as
 * +hh:mm, Z, or none = UTC, also SQLite's CURRENT_TIMESTAMP form). Returns 0 and sets
 * *wall_ns, or -1 when unparsable. Go's zero time "0001-01-01 00:00:00+00:00" parses to
 * a value < 0 that util_time_is_never() reports as "never". */
int util_parse_db_time(const char *text, int64_t *wall_ns);
int util_time_is_never(int64_t wall_ns);

/* ---- ids and secrets ---- */
/* Random (v4) UUID text, 36 chars + NUL. */
void util_uuid4(char out[37]);
/* Time-ordered (v7, RFC 9562) UUID text: wall_ns's milliseconds first, then 74 random bits.
 * Rows keyed by it reach an index in order (an append at its right edge). */
void util_uuid7(char out[37], int64_t wall_ns);
/* n random bytes from the OS (getrandom). Returns 0 on success. For secrets (tokens). */
int util_random_bytes(void *out, size_t n);
/* A per-loop source of bytes for ids, which need uniqueness, not secrecy: refilled from the
 * OS in blocks, so drawing an id costs no syscall. Zero-initialized is ready (empty). Not
 * thread-safe: one per loop or thread. */
#define UTIL_RNG_BLOCK 4096
typedef struct util_rng {
    size_t avail; /* unread bytes at the end of buf */
    unsigned char buf[UTIL_RNG_BLOCK];
} util_rng_t;
int util_rng_bytes(util_rng_t *rng, void *out, size_t n);
/* util_uuid7 drawing its random bits from rng. */
void util_uuid7_rng(util_rng_t *rng, char out[37], int64_t wall_ns);
/* Compares in time that depends only on the lengths, never on where the bytes differ. */
int util_secure_equal(const char *a, size_t alen, const char *b, size_t blen);

/* ---- arena: request-scoped memory, freed all at once ---- */
typedef struct arena_block arena_block_t;
/* A per-loop free list of standard arena blocks, with a ceiling, so a request's arena costs
 * no malloc in steady state. Zero-initialized is ready (max 0 means ARENA_POOL_MAX). */
#define ARENA_POOL_MAX 256
typedef struct arena_pool {
    arena_block_t *free;
    size_t n_free, max_free;
} arena_pool_t;
/* Frees the blocks on the free list (at exit). */
void arena_pool_release(arena_pool_t *p);
typedef struct arena {
    arena_block_t *head;
    arena_pool_t *pool; /* NULL: blocks come from malloc and go back to free */
} arena_t;
void arena_init(arena_t *a);
/* An arena whose standard blocks come from pool and return to it on arena_free. */
void arena_init_pooled(arena_t *a, arena_pool_t *pool);
void *arena_alloc(arena_t *a, size_t n);
char *arena_strndup(arena_t *a, const char *s, size_t n);
char *arena_strdup(arena_t *a, const char *s);
char *arena_printf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void arena_free(arena_t *a);

/* ---- growable buffer ---- */
typedef struct buf {
    char *data;
    size_t len, cap;
} buf_t;
int buf_reserve(buf_t *b, size_t extra);
int buf_append(buf_t *b, const void *p, size_t n);
int buf_appends(buf_t *b, const char *s);
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
int buf_append_json_string(buf_t *b, const char *s, size_t n);
void buf_free(buf_t *b);

/* ---- number text without printf (per-request paths) ---- */
/* Decimal digits of v into out (>= 21 bytes), NUL-terminated; returns the length. */
size_t util_fmt_i64(char *out, int64_t v);
/* Lower-case hex digits of v into out (>= 17 bytes), NUL-terminated; returns the length. */
size_t util_fmt_hex(char *out, uint64_t v);
int buf_append_i64(buf_t *b, int64_t v);

/* ---- logging (standard error; never pass a key or a token) ---- */
enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
void route_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void route_vlog(int level, const char *fmt, va_list ap);
/* Minimum level printed; read from ROUTE_LOG_LEVEL (debug|info|warn|error) at start. */
void route_log_set_level(int level);
/* -log-format json: every line one JSON object {"time","level","message"} (set at start). */
void route_log_set_json(int on);
/* For a line that can come once per request or connection (a refused client, a failing hook):
 * at most one per LOG_LIMIT_INTERVAL_NS per limiter, and the next one says how many were held
 * back meanwhile. The limiter lives in its caller's object (zeroed = ready). */
typedef struct log_limiter {
    int64_t next_ns;
    uint64_t held_back;
} log_limiter_t;
#define LOG_LIMIT_INTERVAL_NS (10 * 1000000000LL)
void route_log_limited(log_limiter_t *l, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif

#ifndef ROUTE_REFBUF_H
#define ROUTE_REFBUF_H
/* ---- refbuf: a reference-counted byte block, so a read buffer can be handed to a write
 * (or several) without copying; freed when the last holder releases it. Loop thread only. */
typedef struct refbuf {
    unsigned refs;
    size_t cap, len;
    char data[];
} refbuf_t;
refbuf_t *refbuf_new(size_t cap);
void refbuf_retain(refbuf_t *b);
void refbuf_release(refbuf_t *b);
#endif
