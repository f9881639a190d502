/* store_internal.h: the SQLite store's private state, shared by the files of src/store/ only.
 *
 * Threading domains and their locks:
 *   sync_db   start-up, CLI and admin work threads (sync.c), serialized by sync_mu;
 *   writer_db the writer thread's own (writer.c): records, counters, loop config writes, and
 *             the poll of `PRAGMA data_version` that sees other connections' commits (its own
 *             commits do not move it, so the writer's records never trigger a re-read);
 *   loop      the event loop's cached snapshot (cache.c), touched by no other thread;
 *   queue_mu  what the loop hands to the writer (rows, folded bumps, config writes);
 *   snap_mu   orders snapshot reads against the writer's COMMIT, so a snapshot's committed
 *             bump totals and config sequence match the rows it read exactly;
 *   inbox_mu  the snapshot the writer hands to the loop, and whether a loop is attached.
 * Lock order: sync_mu, then snap_mu, then queue_mu (the writer's pacer reads the queue's depth
 * during a COMMIT, under snap_mu); nothing is taken under queue_mu or inbox_mu, and inbox_mu
 * is never held with another. */
#ifndef ROUTE_STORE_INTERNAL_H
#define ROUTE_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <uv.h>

#include "route/store.h"
#include "route/util.h"

#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_COUNT(a)        (sizeof(a) / sizeof *(a))
/* Another process's change is seen within this (the spec allows 250 ms). */
#define STORE_POLL_NS (100 * 1000000LL)

#define UPSTREAM_SELECT                                                                            \
    "SELECT `id`,`created_at`,`updated_at`,`sk`,`endpoint`,`success_count`,`failed_count`,"        \
    "`last_call_success_time` FROM `openai_upstreams` WHERE `deleted_at` IS NULL ORDER BY `id`"
#define CONFIG_SELECT                                                                              \
    "SELECT `key`,`value` FROM `config_kvs` WHERE `deleted_at` IS NULL ORDER BY `key`"
#define CONFIG_UPSERT                                                                              \
    "INSERT INTO `config_kvs` (`created_at`,`updated_at`,`key`,`value`) VALUES (?,?,?,?) "         \
    "ON CONFLICT(`key`) DO UPDATE SET `value`=excluded.`value`,"                                   \
    "`updated_at`=excluded.`updated_at`,`deleted_at`=NULL"
#define RECORD_COLUMNS                                                                             \
    "`id`,`created_at`,`ip`,`body`,`response`,`elapsed_time`,`model`,`status`,`upstream_id`,"      \
    "`upstream_endpoint`,`prompt_tokens`,`completion_tokens`,`total_tokens`,`response_time`,"      \
    "`user_agent`,`error`,`cached_tokens`,`reasoning_tokens`"

typedef struct kv {
    char *key, *value;
} kv_t;

typedef struct kv_list {
    kv_t *items;
    size_t n;
} kv_list_t;

/* Per upstream, a count of counter bumps: issued by the loop (cache.c), waiting for the writer
 * (folded), or committed by it. A bump's sequence is its rank in its upstream's count. */
typedef struct bump {
    int64_t upstream_id;
    int64_t success, failed;
    int64_t last_success_at; /* wall ns of the newest success counted here; 0: none */
    int64_t last_at;         /* wall ns of the newest bump counted here */
} bump_t;

typedef struct bump_table {
    bump_t *items;
    size_t n, cap;
} bump_table_t;

/* A config value the loop set: queued for the writer, and kept by the loop (pending) until a
 * snapshot shows it committed (its seq <= the snapshot's config_seq). */
typedef struct config_item {
    struct config_item *next;
    char *key, *value;
    int64_t at;
    uint64_t seq;
} config_item_t;

struct store_snapshot {
    uint64_t epoch; /* read order among this store's snapshots */
    kv_list_t config;
    store_upstream_list_t upstreams;
    bump_table_t committed; /* bumps committed when it was read */
    uint64_t config_seq;    /* loop config writes committed when it was read */
    int from_poller;        /* another connection's commit caused it: log what changed */
};

/* A store problem (writer.c). */
typedef struct store_fault {
    int active;
    char detail[256];
    int64_t since_ns, logged_ns;
    uint64_t dropped_before; /* dropped_total when it began */
} store_fault_t;

/* Called before each write of a connection to its database file or its WAL, on the thread
 * that writes: the writer paces itself with it (writer.c). */
typedef struct store_pacer {
    void (*pace)(void *arg);
    void *arg;
} store_pacer_t;

struct store {
    /* sync.c */
    sqlite3 *sync_db;
    pthread_mutex_t sync_mu;

    /* snap_mu: the writer's committed figures, as of its last COMMIT. */
    pthread_mutex_t snap_mu;
    uint64_t snapshot_epoch;
    bump_table_t committed;
    uint64_t config_seq_written;

    /* Loop thread only (cache.c). */
    kv_list_t config;
    store_upstream_list_t upstreams;
    uint64_t installed_epoch;
    uint64_t config_generation, upstreams_generation;
    config_item_t *pending;
    uint64_t config_seq;
    bump_table_t issued;
    uv_async_t async;
    int async_open;

    /* inbox_mu: writer -> loop. */
    pthread_mutex_t inbox_mu;
    store_snapshot_t *inbox;
    int attached;

    /* Writer thread only (writer.c). */
    sqlite3 *writer_db;
    sqlite3_stmt *w_record, *w_record_group, *w_counts, *w_config, *w_begin, *w_commit, *w_rollback;
    sqlite3_stmt *w_version, *w_read_begin, *w_read_end, *w_sel_config, *w_sel_upstreams;
    int64_t data_version;
    int wal_pages;            /* WAL frames after the writer's last commit (its wal hook) */
    int wal_checkpoint_pages; /* a PASSIVE checkpoint past this many */
    bump_table_t w_folded;    /* the batch's bumps, swapped with queue_folded */
    int64_t next_poll_ns, last_drop_log_ns;
    uint64_t dropped_logged;

    /* queue_mu: loop -> writer. */
    pthread_mutex_t queue_mu;
    pthread_cond_t queue_cond;
    store_record_t *queue_head, *queue_tail;
    size_t queue_depth, queue_max;
    size_t queue_bytes, queue_bytes_max;
    /* Writer thread only: a failing database fails every group commit (every 50 ms). */
    log_limiter_t write_log, lost_log;
    /* Writer thread only: what is wrong now, each logged when it starts, every 10 s while it
     * lasts and when it ends (writer.c). */
    store_fault_t write_fault, checkpoint_fault, wal_fault;
    char *path_db, *path_wal, *path_shm; /* checked writable before SQLite maps or writes */
    int page_size;
    size_t backlog_peak_bytes; /* the most the queue held since memory was last given back */
    size_t trim_rows;          /* rows written since then */
    int64_t last_trim_ns;
    store_pacer_t pacer;    /* writer_pace, on the writer connection's files */
    int64_t slice_start_ns; /* when the writer last offered the core */
    uint64_t late_total;    /* rows written after waiting out a fault (queue_mu) */
    int faulted;            /* write_fault.active, for store_stats (queue_mu) */
    bump_table_t queue_folded;
    config_item_t *queue_config, **queue_config_tail;
    int writer_sleeping, stopping, polling;
    uint64_t dropped_total, written_total, external_reloads;
    pthread_t writer;
    int writer_started;

    /* retention.c: the days under queue_mu (set by the loop); the schedule, writer only. */
    int64_t retention_days;
    int64_t retention_next_ns, retention_pass_deleted, retention_pass_batches;
    log_limiter_t retention_log;
};

/* ---- vfs.c ---- */
#define STORE_VFS_NAME "route-guarded"
/* The VFS name to open with (registered on first use), NULL: the default. */
const char *store_vfs(void);
/* Attaches pacer (which must outlive the connection) to db's files; returns a SQLite code. */
int store_vfs_set_pacer(sqlite3 *db, store_pacer_t *pacer);
/* ---- schema.c: connections, SQL helpers, rows ---- */
void store_set_err(char **err, sqlite3 *db);
sqlite3 *store_db_open(const char *path, int busy_ms, char **err);
int store_create_schema(sqlite3 *db, char **err);
int store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out);
/* Binds by type letters: s text (NULL binds NULL), S text + size_t length, i int64, t wall ns
 * as the Go database text. */
#define store_bind(st, ...) store_bind_at((st), 1, __VA_ARGS__)
/* store_bind from parameter `first` on (a row of a multi-row INSERT). */
int store_bind_at(sqlite3_stmt *st, int first, const char *types, ...);
sqlite3_stmt *store_query(sqlite3 *db, const char *sql, const char *types, ...);
/* Runs a statement to completion; returns the SQLite result code (SQLITE_DONE on success). */
int store_run(sqlite3 *db, const char *sql, const char *types, ...);
int store_step_reset(sqlite3_stmt *st);
int store_exec(sqlite3 *db, const char *sql);
int64_t store_column_time(sqlite3_stmt *st, int col);
char *store_column_dup(sqlite3_stmt *st, int col, size_t *len);
int store_read_upstreams(sqlite3_stmt *st, store_upstream_list_t *out);
int store_read_config(sqlite3_stmt *st, kv_list_t *out);
void store_kv_list_free(kv_list_t *l);
int store_kv_set(kv_list_t *l, const char *key, const char *value);
/* One snapshot on db (sync_db under sync_mu, or the writer's): its epoch and committed
 * figures are taken under snap_mu together with the read. */
store_snapshot_t *store_snapshot_read_on(store_t *s, sqlite3_stmt *begin, sqlite3_stmt *end,
                                         sqlite3_stmt *sel_config, sqlite3_stmt *sel_upstreams);

/* ---- bump tables ---- */
bump_t *store_bump_find(bump_table_t *t, int64_t upstream_id);
bump_t *store_bump_get(bump_table_t *t, int64_t upstream_id); /* adds a zero row; NULL: OOM */
int store_bump_copy(bump_table_t *dst, const bump_table_t *src);
void store_bump_free(bump_table_t *t);

/* ---- cache.c ---- */
void store_cache_free(store_t *s);
void store_config_item_free(config_item_t *it);

/* ---- writer.c ---- */
int store_writer_prepare(store_t *s, const char *path, char **err);
void store_writer_set_polling(store_t *s, int on);
int store_writer_start(store_t *s);
void store_writer_stop(store_t *s); /* writes everything queued first */
void store_writer_free(store_t *s);
void store_writer_enqueue_config(store_t *s, config_item_t *it);
int store_writer_fold(store_t *s, int64_t upstream_id, int success, int64_t at);
void store_writer_enqueue_record(store_t *s, store_record_t *r);
/* After a commit on writer_db: a PASSIVE checkpoint once the WAL is past its bound. */
void store_writer_checkpoint_if_due(store_t *s);

/* ---- retention.c (writer thread, between batches) ---- */
void store_retention_run(store_t *s, int64_t now_mono_ns);

#endif
