/* store.h: the database the Go program wrote (openai_upstreams, config_kvs, records) behind one
 * backend-neutral interface: the schema and its migrations, one-shot calls for the CLI and the
 * admin API, a cached view for the event loop, and a writer thread for the loop's writes.
 *
 * The backend today is SQLite in WAL mode (src/store/). Nothing here names a SQLite type or
 * call, so a second backend can implement this header as is: a PostgreSQL one would keep the
 * same four parts, with the sync calls on a pooled connection, the writer's group commit as a
 * multi-row INSERT (or COPY) plus one UPDATE per upstream in a transaction, and the external
 * change poller turned into LISTEN/NOTIFY on a trigger of config_kvs and openai_upstreams (or
 * a cheap `SELECT max(updated_at)` every 100 ms); snapshots and bump sequences stay as they are.
 *
 * Threading:
 *   - store_open/close, the sync calls and store_snapshot_read block; they run on the CLI,
 *     at start-up or on a libuv work thread, never on the event loop thread.
 *   - store_loop_* calls run on the event loop thread and never block on the database: they
 *     read the loop's cached snapshot or queue work for the writer thread.
 *   - Changes made by another process (-set, -add, a hand edit) reach the loop's snapshot
 *     within about 100 ms (at most 250 ms), through the loop handle of store_attach_loop.
 *     Changes made through this store_t (store_loop_config_set, counter bumps, an applied
 *     admin snapshot) are in the loop's snapshot at once, and stay there until written. */
#ifndef ROUTE_STORE_H
#define ROUTE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store_t;

enum { STORE_OK = 0, STORE_ERROR = -1, STORE_EXISTS = -2, STORE_NOT_FOUND = -3 };

typedef struct store_upstream {
    int64_t id;
    int64_t created_at, updated_at; /* wall ns */
    char *sk, *endpoint;
    int64_t success_count, failed_count;
    int64_t last_call_success_time; /* wall ns; 0 when never (NULL or Go zero time) */
    int has_last_success;
} store_upstream_t;

typedef struct store_upstream_list {
    store_upstream_t *items;
    size_t n;
} store_upstream_list_t;
void store_upstream_list_free(store_upstream_list_t *l);

/* One row of `records`; NULL means empty. Strings are owned by the record: each either
 * malloc'd on its own or inside the record's one allocation (store_record_new_inline, so a
 * row costs one malloc); store_record_free frees both kinds. To replace a string use
 * store_record_set_string (never free() a field yourself: it may be inline). An inline
 * string is never empty (NULL stands for that). */
typedef struct store_record {
    char id[37];
    int64_t created_at; /* wall ns */
    char *ip, *body, *response, *model, *upstream_endpoint, *user_agent, *error;
    size_t body_len, response_len;
    int64_t elapsed_ns, response_time_ns;
    int status;
    int64_t upstream_id; /* 0: none */
    int64_t prompt_tokens, completion_tokens, total_tokens;
    /* No usage was reported (or all of it 0): the three counts are written as NULL. */
    int usage_missing;
    /* The subsets of the usage the API reports; < 0 when it did not (NULL). */
    int64_t cached_tokens, reasoning_tokens;
    /* The store's queue link (so queueing a row costs no allocation) and the bytes the row
     * holds while queued (set by the store); callers leave both alone. */
    struct store_record *queue_next;
    size_t queue_bytes;
    size_t inline_len; /* bytes of string storage right after the struct */
} store_record_t;
store_record_t *store_record_new(void);
/* With the caller's id (a request's, already a v7 uuid) and time: no second id drawn. */
store_record_t *store_record_new_id(const char *id, int64_t created_at);
/* With inline_len bytes of string storage after the struct, at store_record_inline(r). */
store_record_t *store_record_new_inline(const char *id, int64_t created_at, size_t inline_len);
static inline char *store_record_inline(store_record_t *r) {
    return (char *)(r + 1);
}
/* *field = a malloc'd copy of s[0..n) (NUL-terminated), the old string freed unless inline.
 * 0, or -1 when out of memory (the field unchanged). */
int store_record_set_string(store_record_t *r, char **field, const char *s, size_t n);
void store_record_free(store_record_t *r);

/* Opens (creating the file and schema, or migrating an older one by ADD COLUMN), reads the
 * first snapshot for the loop and starts the writer thread. On error returns NULL and a
 * malloc'd message in *err. */
store_t *store_open(const char *path, char **err);
/* Writes every queued item (SIGTERM loses no record), stops the writer thread, closes. Call
 * store_detach_loop first when a loop was attached. */
void store_close(store_t *s);

/* ---- synchronous calls (CLI, start-up, admin work threads) ---- */
/* -add: STORE_OK (new or revived soft-deleted pair, *id set), STORE_EXISTS (live pair). */
int store_add_upstream(store_t *s, const char *sk, const char *endpoint, int64_t *id);
/* NULL sk/endpoint keeps that field. STORE_NOT_FOUND, STORE_EXISTS (pair taken). */
int store_update_upstream(store_t *s, int64_t id, const char *sk, const char *endpoint);
int store_delete_upstream(store_t *s, int64_t id);
int store_list_upstreams(store_t *s, store_upstream_list_t *out);
/* Returns a malloc'd value or NULL when the key is missing (or deleted). */
char *store_config_get(store_t *s, const char *key);
int store_config_set(store_t *s, const char *key, const char *value);
/* Calls fn for each live config key, ordered by key. */
int store_config_each(store_t *s, void (*fn)(void *ud, const char *key, const char *value),
                      void *ud);
/* Newest first. Fills out[] (caller frees with store_record_free each). */
int store_list_records(store_t *s, int limit, int offset, store_record_t ***out, size_t *n);

/* Which rows a records query returns: each has_* field turns its condition on; all off is
 * every row. Values are bound as parameters, never spliced into the SQL. Times compare as
 * instants (rows written under different UTC offsets order correctly). */
typedef struct store_record_filter {
    const char *model; /* exact `model`; NULL: any */
    int has_status, has_upstream_id, has_since, has_until;
    int status;
    int64_t upstream_id;        /* 0: the rows no upstream answered (500s before any) */
    int64_t since_ns, until_ns; /* wall ns: created_at >= since, created_at < until */
} store_record_filter_t;
/* store_list_records with a filter (NULL: none): a page of the newest matching rows. */
int store_query_records(store_t *s, const store_record_filter_t *f, int limit, int offset,
                        store_record_t ***out, size_t *n);
/* Every matching row, oldest first, through one statement (never all rows in memory): fn sees
 * each (valid during the call only) and returns nonzero to stop early. Holds the sync
 * connection throughout: for the CLI. STORE_OK, or STORE_ERROR on a read error. */
int store_each_record(store_t *s, const store_record_filter_t *f,
                      int (*fn)(void *ud, const store_record_t *r), void *ud);

/* Opens an existing database read-only for -check: no file, schema, migration or writer is
 * created; the loop cache holds its config and upstreams (store_loop_config works), and the
 * sync reads work. Writes through it are never made. NULL with a malloc'd *err otherwise. */
store_t *store_open_readonly(const char *path, char **err);

/* A consistent read of the live config and upstreams as committed now, ordered against every
 * other snapshot of this store_t, with the counter bumps and config writes it already holds.
 * Blocking; NULL when out of memory or on a read error. The admin API reads one after a change
 * and hands it to store_loop_apply on the loop, so the very next request sees the change. */
typedef struct store_snapshot store_snapshot_t;
store_snapshot_t *store_snapshot_read(store_t *s);
void store_snapshot_free(store_snapshot_t *snap);

/* ---- event loop thread ---- */
/* Lets changes by other processes reach the loop: a poller (every 100 ms, off the loop) hands
 * fresh snapshots over through a uv_async_t on loop (unreferenced: it never keeps the loop
 * alive). Also installs a fresh snapshot now, so call it at start-up before the loop runs. */
int store_attach_loop(store_t *s, uv_loop_t *loop);
/* Stops the hand-over and closes the async handle (its close completes on the next loop
 * iteration). Idempotent; call it before the loop closes (before uv_walk closes everything). */
void store_detach_loop(store_t *s);
/* Installs snap unless a newer snapshot is already in place, overlaying what this store_t
 * queued and has not written yet (counter bumps by sequence, config values). Takes snap. */
void store_loop_apply(store_t *s, store_snapshot_t *snap);

/* Cached config value or NULL. Valid until control returns to the loop (a new snapshot may be
 * installed then) or the next store_loop_config_set. */
const char *store_loop_config(store_t *s, const char *key);
/* Cached live upstreams, ordered by id, counters current. Valid until control returns to the
 * loop or the next store_loop_apply. */
const store_upstream_list_t *store_loop_upstreams(store_t *s);
/* Change counters of the loop's cache: config_generation moves whenever a cached config value
 * changed (in-process set or another process's write); upstreams_generation whenever the set
 * of upstreams or an sk/endpoint changed (not on counter bumps: read the counts from
 * store_loop_upstreams, which are always current). Consumers re-derive their own views
 * (typed config, Lua tables) only when these move. */
uint64_t store_loop_config_generation(const store_t *s);
uint64_t store_loop_upstreams_generation(const store_t *s);
/* Updates the cache now and queues the write. -1 with *why when the key is empty or longer
 * than STORE_CONFIG_KEY_MAX, the value longer than STORE_CONFIG_VALUE_MAX, or the key new
 * while STORE_CONFIG_KEYS_MAX keys exist (config_kvs holds settings, not data). */
#define STORE_CONFIG_KEYS_MAX  1024
#define STORE_CONFIG_KEY_MAX   128
#define STORE_CONFIG_VALUE_MAX (64 * 1024)
int store_loop_config_set(store_t *s, const char *key, const char *value, const char **why);
/* Queues a row; takes ownership of r. Past either queue bound (rows, bytes) the oldest queued
 * rows are dropped (counted in store_stats, logged at most once per 10 s). */
void store_loop_record(store_t *s, store_record_t *r);
/* Counts success_count+1 & last_call_success_time=now, or failed_count+1, in the cache now;
 * the writer folds them into one UPDATE per upstream per batch. */
void store_loop_upstream_result(store_t *s, int64_t upstream_id, int success);
/* The bounds on queued rows (config key records_queue_max, default 100000) and on the bytes
 * they hold (records_queue_max_mb, default 64 MiB); at least 1 each. The writer holds at most
 * one batch (WRITE_BATCH_MAX rows, 8 MiB) outside these while it writes it, and keeps it while
 * the database fails (locked, full, unwritable), retrying. */
void store_loop_set_records_queue_max(store_t *s, size_t max_rows, size_t max_bytes);
/* Config key records_retention_days (0: keep every row): the writer thread deletes rows older
 * than that, in batches of at most 1,000 between its own batches (src/store/retention.c). */
void store_loop_set_records_retention(store_t *s, int64_t days);

/* Writer figures, for /metrics. Any thread. */
typedef struct store_stats {
    uint64_t queue_depth;   /* rows queued, not yet taken by the writer */
    uint64_t queue_bytes;   /* the bytes those rows hold */
    uint64_t dropped_total; /* rows dropped past the bound */
    uint64_t written_total; /* rows committed */
    uint64_t late_total;    /* of those, rows that waited out a store fault (locked, full...) */
    uint64_t faulted;       /* 1 while writes fail (the writer retries, the queue holds) */
    /* Snapshots re-read because another connection committed (never the writer's own). */
    uint64_t external_reloads;
} store_stats_t;
void store_stats(store_t *s, store_stats_t *out);

#endif
