/* writer.c: the writer thread: everything the loop queues (records, counter bumps, config
 * values) goes to the database in group commits, and, between batches, the poll that notices
 * other connections' commits and hands a fresh snapshot to the loop, and the deletes of
 * records_retention_days (retention.c).
 *
 * Group commit: each pass takes whatever is queued (up to WRITE_BATCH_MAX rows), the bumps
 * folded per upstream since the last pass, and the config values, and writes them in one
 * transaction with prepared BEGIN/COMMIT: multi-row INSERTs of RECORD_GROUP rows (the tail
 * of a batch, or a group with a row the database refuses, row by row), one UPDATE per
 * upstream. The loop wakes the thread only when it was asleep on an empty queue. The queue
 * is bounded (records_queue_max): past it the oldest rows go, counted and reported at most
 * every 10 s.
 *
 * Faults: a batch that fails for a reason a retry can outlive (a lock, a full disk, a file
 * made unwritable) is rolled back and retried with backoff for as long as it lasts, the queue
 * filling within its bound meanwhile; each problem is logged when it starts, every 10 s while
 * it lasts and when it ends, with the rows written late and dropped.
 *
 * Owns: the writer connection, its statements and WAL checkpoints (its autocheckpoint is off:
 * a PASSIVE checkpoint past WAL_CHECKPOINT_BYTES, from this thread, after a commit; the WAL
 * cut back to WAL_KEEP_BYTES when it starts over), the queue,
 * the committed figures snapshots are stamped with, the external-change poll, the retry and
 * fault log, giving memory back after a burst (malloc_trim).
 * Must not: let the loop wait on anything but a pointer swap under queue_mu, drop a row while
 * the queue is within its bound, lose a queued item on store_close, or log a key, a token or a
 * config value. */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <malloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

#include "route/util.h"
#include "store_internal.h"

#define WRITE_BATCH_MAX 4096
/* A batch is outside the queue's bounds while it is written: this keeps it small in bytes too
 * (4096 rows of 20 KB bodies would be 80 MB on top of the cap). */
#define WRITE_BATCH_BYTES    ((size_t)8 << 20)
#define WAL_CHECKPOINT_BYTES (16 << 20)
/* A WAL past this many bytes after a checkpoint is a problem of its own (a reader that never
 * ends, a database file that cannot be written): logged as such. */
#define WAL_ALERT_BYTES ((int64_t)256 << 20)
/* What the WAL file is cut back to when it starts over (journal_size_limit). */
#define WAL_KEEP_BYTES ((int64_t)2 * WAL_CHECKPOINT_BYTES)
#define DROP_LOG_NS    (10 * 1000000000LL)
#define FAULT_LOG_NS   (10 * 1000000000LL)
/* A failing batch is retried after this, doubling up to RETRY_MAX_NS, for as long as the fault
 * lasts; only store_close gives up, after STOP_GIVE_UP_NS, so an exit is bounded. */
#define RETRY_MIN_NS    (50 * 1000000LL)
#define RETRY_MAX_NS    (2 * 1000000000LL)
#define STOP_GIVE_UP_NS (10 * 1000000000LL)
/* The writer's own busy wait: a commit of another process (a -set) takes milliseconds; a lock
 * held longer is a fault, logged, and waited out by finish_batch's backoff instead. */
#define WRITER_BUSY_MS 250
/* Memory goes back to the system (malloc_trim) when the writer goes idle after a burst: this
 * many rows written, or the queue having held this many bytes; at most every TRIM_EVERY_NS. */
#define TRIM_AFTER_ROWS  1000
#define TRIM_AFTER_BYTES ((size_t)8 << 20)
#define TRIM_EVERY_NS    (5 * 1000000000LL)
#define WRITER_CACHE_KIB                                                                           \
    16384 /* a whole group commit (up to 50 ms of rows) fits without spilling */
/* Commits at most this often, each with what accumulated meanwhile: at a moderate rate (a
 * request every 100 us) a wake-up per row would mean a transaction per row, the cost the issue
 * measured. A row waits at most this long for its commit (unless the batch fills first). */
#define GROUP_COMMIT_NS (50 * 1000000LL)

/* Rows per multi-row INSERT: one statement opens its cursors on the table and its five
 * indexes once for all its rows, where a statement per row opens and closes them per row.
 * 16 rows of ~1 KB take about as long as one pacing slice. */
#define RECORD_GROUP      16
#define RECORD_PARAMS     18 /* placeholders per row: RECORD_COLUMNS */
#define RECORD_ROW_SQL    "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
#define RECORD_INSERT_SQL "INSERT INTO `records` (" RECORD_COLUMNS ") VALUES "

static void writer_pace(void *arg);

/* ---- the loop's side ---- */

static void wake_locked(store_t *s, int *wake) {
    *wake = s->writer_sleeping;
    s->writer_sleeping = 0;
}

/* What a queued row costs in memory: the struct, its strings and malloc's overhead of about 16
 * bytes per block. */
static size_t record_bytes(const store_record_t *r) {
    const char *strings[] = {r->ip, r->model, r->upstream_endpoint, r->user_agent, r->error};
    size_t n = sizeof(*r) + 16 + (r->body ? r->body_len + 17 : 0) +
               (r->response ? r->response_len + 17 : 0);
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if (strings[i]) n += strlen(strings[i]) + 17;
    return n;
}

void store_writer_enqueue_record(store_t *s, store_record_t *r) {
    store_record_t *dropped = NULL;
    int wake;
    r->queue_next = NULL;
    r->queue_bytes = record_bytes(r);
    pthread_mutex_lock(&s->queue_mu);
    if (s->queue_tail)
        s->queue_tail->queue_next = r;
    else
        s->queue_head = r;
    s->queue_tail = r;
    s->queue_depth++;
    s->queue_bytes += r->queue_bytes;
    /* The newest row stays even when it alone is over the byte bound: a bound on memory must
     * not turn into a rule that big exchanges are never recorded. */
    while (s->queue_head != r &&
           (s->queue_depth > s->queue_max || s->queue_bytes > s->queue_bytes_max)) {
        store_record_t *old = s->queue_head;
        s->queue_head = old->queue_next;
        old->queue_next = dropped;
        dropped = old;
        s->queue_depth--;
        s->queue_bytes -= old->queue_bytes;
        s->dropped_total++;
    }
    wake_locked(s, &wake);
    pthread_mutex_unlock(&s->queue_mu);
    if (wake) pthread_cond_signal(&s->queue_cond);
    for (store_record_t *next; dropped; dropped = next) {
        next = dropped->queue_next;
        store_record_free(dropped);
    }
}

int store_writer_fold(store_t *s, int64_t upstream_id, int success, int64_t at) {
    int wake;
    pthread_mutex_lock(&s->queue_mu);
    bump_t *b = store_bump_get(&s->queue_folded, upstream_id);
    if (b) {
        if (success) {
            b->success++;
            b->last_success_at = at;
        } else {
            b->failed++;
        }
        b->last_at = at;
    }
    wake_locked(s, &wake);
    pthread_mutex_unlock(&s->queue_mu);
    if (wake) pthread_cond_signal(&s->queue_cond);
    return b ? 0 : -1;
}

void store_writer_enqueue_config(store_t *s, config_item_t *it) {
    int wake;
    it->next = NULL;
    pthread_mutex_lock(&s->queue_mu);
    /* One queued write per key, the newest: while the database is stalled a script setting
     * the same key on every request must not grow the queue (the keys themselves are bounded
     * by store_loop_config_set). */
    config_item_t *same = s->queue_config;
    while (same && strcmp(same->key, it->key) != 0)
        same = same->next;
    if (same) {
        char *v = same->value;
        same->value = it->value;
        it->value = v;
        same->seq = it->seq;
        same->at = it->at;
        pthread_mutex_unlock(&s->queue_mu);
        store_config_item_free(it);
        return;
    }
    *s->queue_config_tail = it;
    s->queue_config_tail = &it->next;
    wake_locked(s, &wake);
    pthread_mutex_unlock(&s->queue_mu);
    if (wake) pthread_cond_signal(&s->queue_cond);
}

void store_writer_set_polling(store_t *s, int on) {
    int wake;
    pthread_mutex_lock(&s->queue_mu);
    s->polling = on;
    wake_locked(s, &wake);
    pthread_mutex_unlock(&s->queue_mu);
    if (wake) pthread_cond_signal(&s->queue_cond);
}

void store_loop_set_records_queue_max(store_t *s, size_t max_rows, size_t max_bytes) {
    pthread_mutex_lock(&s->queue_mu);
    s->queue_max = max_rows ? max_rows : 1;
    s->queue_bytes_max = max_bytes ? max_bytes : 1;
    pthread_mutex_unlock(&s->queue_mu);
}

void store_stats(store_t *s, store_stats_t *out) {
    pthread_mutex_lock(&s->queue_mu);
    out->queue_depth = s->queue_depth;
    out->queue_bytes = s->queue_bytes;
    out->dropped_total = s->dropped_total;
    out->written_total = s->written_total;
    out->late_total = s->late_total;
    out->faulted = (uint64_t)s->faulted;
    out->external_reloads = s->external_reloads;
    pthread_mutex_unlock(&s->queue_mu);
}

/* ---- set-up ---- */

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages) {
    store_t *s = arg;
    s->wal_pages = pages;
    return SQLITE_OK;
}

int store_writer_prepare(store_t *s, const char *path, char **err) {
    static const char *const sql[] = {
        RECORD_INSERT_SQL RECORD_ROW_SQL,
        /* Folded: ?1 successes, ?2 failures, ?3 the newest success (used when ?1 > 0), ?4 the
         * newest bump, ?5 the upstream. */
        "UPDATE `openai_upstreams` SET `success_count`=COALESCE(`success_count`,0)+?1,"
        "`failed_count`=COALESCE(`failed_count`,0)+?2,"
        "`last_call_success_time`=CASE WHEN ?1>0 THEN ?3 ELSE `last_call_success_time` END,"
        "`updated_at`=?4 WHERE `id`=?5",
        CONFIG_UPSERT,
        "BEGIN IMMEDIATE",
        "COMMIT",
        "ROLLBACK",
        "PRAGMA data_version",
        "BEGIN",
        "COMMIT",
        CONFIG_SELECT,
        UPSTREAM_SELECT,
    };
    sqlite3_stmt **const out[] = {&s->w_record,     &s->w_counts,       &s->w_config,
                                  &s->w_begin,      &s->w_commit,       &s->w_rollback,
                                  &s->w_version,    &s->w_read_begin,   &s->w_read_end,
                                  &s->w_sel_config, &s->w_sel_upstreams};
    if (!(s->writer_db = store_db_open(path, WRITER_BUSY_MS, err))) return -1;
    char group_sql[sizeof RECORD_INSERT_SQL + RECORD_GROUP * sizeof RECORD_ROW_SQL];
    size_t len = (size_t)snprintf(group_sql, sizeof group_sql, "%s", RECORD_INSERT_SQL);
    for (int i = 0; i < RECORD_GROUP; i++)
        len += (size_t)snprintf(group_sql + len, sizeof group_sql - len, "%s" RECORD_ROW_SQL,
                                i ? "," : "");
    s->pacer = (store_pacer_t){.pace = writer_pace, .arg = s};
    store_vfs_set_pacer(s->writer_db, &s->pacer);
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA cache_size=-%d", WRITER_CACHE_KIB);
    store_exec(s->writer_db, pragma);
    /* A WAL that grew while a reader pinned it (hundreds of MB) is cut back to this when it
     * starts over; without the limit SQLite keeps the file at its largest until the last
     * connection closes. */
    snprintf(pragma, sizeof pragma, "PRAGMA journal_size_limit=%lld", (long long)WAL_KEEP_BYTES);
    store_exec(s->writer_db, pragma);
    /* Replaces the autocheckpoint: the WAL is checkpointed by this thread, between batches. */
    sqlite3_wal_hook(s->writer_db, on_wal_commit, s);
    for (size_t i = 0; i < STORE_COUNT(out); i++)
        if (store_prepare(s->writer_db, sql[i], out[i])) {
            store_set_err(err, s->writer_db);
            return -1;
        }
    if (store_prepare(s->writer_db, group_sql, &s->w_record_group)) {
        store_set_err(err, s->writer_db);
        return -1;
    }
    sqlite3_stmt *ps = store_query(s->writer_db, "PRAGMA page_size", "");
    int page_size = ps && sqlite3_step(ps) == SQLITE_ROW ? sqlite3_column_int(ps, 0) : 4096;
    sqlite3_finalize(ps);
    s->page_size = page_size > 0 ? page_size : 4096;
    size_t n = strlen(path) + 8;
    if ((s->path_db = strdup(path)) && (s->path_wal = malloc(n)) && (s->path_shm = malloc(n))) {
        snprintf(s->path_wal, n, "%s-wal", path);
        snprintf(s->path_shm, n, "%s-shm", path);
    }
    s->wal_checkpoint_pages = WAL_CHECKPOINT_BYTES / (page_size > 0 ? page_size : 4096);
    if (sqlite3_step(s->w_version) == SQLITE_ROW)
        s->data_version = sqlite3_column_int64(s->w_version, 0);
    sqlite3_reset(s->w_version);
    return 0;
}

static void *writer_main(void *arg);

int store_writer_start(store_t *s) {
    if (pthread_create(&s->writer, NULL, writer_main, s)) return -1;
    pthread_setname_np(s->writer, "route-writer"); /* for top -H and perf */
    s->writer_started = 1;
    return 0;
}

void store_writer_stop(store_t *s) {
    if (!s->writer_started) return;
    pthread_mutex_lock(&s->queue_mu);
    s->stopping = 1;
    pthread_mutex_unlock(&s->queue_mu);
    pthread_cond_signal(&s->queue_cond);
    pthread_join(s->writer, NULL);
    s->writer_started = 0;
}

void store_writer_free(store_t *s) {
    sqlite3_stmt *stmts[] = {s->w_record,   s->w_record_group, s->w_counts,
                             s->w_config,   s->w_begin,        s->w_commit,
                             s->w_rollback, s->w_version,      s->w_read_begin,
                             s->w_read_end, s->w_sel_config,   s->w_sel_upstreams};
    for (size_t i = 0; i < STORE_COUNT(stmts); i++)
        sqlite3_finalize(stmts[i]);
    sqlite3_close(s->writer_db);
    free(s->path_db);
    free(s->path_wal);
    free(s->path_shm);
    for (store_record_t *next; s->queue_head; s->queue_head = next) {
        next = s->queue_head->queue_next;
        store_record_free(s->queue_head);
    }
    while (s->queue_config) {
        config_item_t *it = s->queue_config;
        s->queue_config = it->next;
        store_config_item_free(it);
    }
    store_bump_free(&s->queue_folded);
    store_bump_free(&s->w_folded);
}

/* ---- writing ---- */

typedef struct batch {
    store_record_t *records;
    size_t n_records;
    config_item_t *config;
    bump_table_t *folded; /* s->w_folded */
} batch_t;

static size_t text_len(const char *s, size_t len) {
    return len ? len : s ? strlen(s) : 0;
}

static int bind_time(sqlite3_stmt *st, int col, int64_t wall_ns) {
    char text[64];
    size_t n = util_format_db_time(text, sizeof text, wall_ns);
    return sqlite3_bind_text(st, col, text, (int)n, SQLITE_TRANSIENT);
}

/* Binds r as the row whose placeholders start at first (1, 19, 37 ... in a group). */
static int bind_record(sqlite3_stmt *st, int first, const store_record_t *r) {
    /* Empty strings, not NULL, as the Go program wrote them. */
    int rc = store_bind_at(st, first, "stsSSisiisiiiiss", r->id, r->created_at, r->ip ?: "",
                           r->body, text_len(r->body, r->body_len), r->response,
                           text_len(r->response, r->response_len), r->elapsed_ns, r->model ?: "",
                           (int64_t)r->status, r->upstream_id, r->upstream_endpoint ?: "",
                           r->prompt_tokens, r->completion_tokens, r->total_tokens,
                           r->response_time_ns, r->user_agent ?: "", r->error ?: "");
    /* A count nobody reported is NULL, never a 0 that would read as "free". */
    for (int col = 10; r->usage_missing && rc == SQLITE_OK && col <= 12; col++)
        rc = sqlite3_bind_null(st, first + col);
    if (rc == SQLITE_OK)
        rc = r->cached_tokens >= 0 ? sqlite3_bind_int64(st, first + 16, r->cached_tokens)
                                   : sqlite3_bind_null(st, first + 16);
    if (rc == SQLITE_OK)
        rc = r->reasoning_tokens >= 0 ? sqlite3_bind_int64(st, first + 17, r->reasoning_tokens)
                                      : sqlite3_bind_null(st, first + 17);
    return rc;
}

static int write_record(store_t *s, const store_record_t *r) {
    int rc = bind_record(s->w_record, 1, r);
    if (rc == SQLITE_OK) rc = store_step_reset(s->w_record);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* The RECORD_GROUP rows from r on in one statement. It is all or nothing (a failed statement
 * undoes its own rows), so on a failure the caller writes the rows one by one. */
static int write_record_group(store_t *s, const store_record_t *r) {
    sqlite3_stmt *st = s->w_record_group;
    int rc = SQLITE_OK;
    for (int i = 0; i < RECORD_GROUP && rc == SQLITE_OK; i++, r = r->queue_next)
        rc = bind_record(st, 1 + i * RECORD_PARAMS, r);
    if (rc == SQLITE_OK) rc = store_step_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int write_counts(store_t *s, const bump_t *b) {
    sqlite3_stmt *st = s->w_counts;
    int rc = sqlite3_bind_int64(st, 1, b->success);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 2, b->failed);
    if (rc == SQLITE_OK)
        rc = b->success ? bind_time(st, 3, b->last_success_at) : sqlite3_bind_null(st, 3);
    if (rc == SQLITE_OK) rc = bind_time(st, 4, b->last_at);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 5, b->upstream_id);
    if (rc == SQLITE_OK) rc = store_step_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int write_config(store_t *s, const config_item_t *it) {
    sqlite3_stmt *st = s->w_config;
    int rc = store_bind(st, "ttss", it->at, it->at, it->key, it->value);
    if (rc == SQLITE_OK) rc = store_step_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* What a finished batch (committed, or given up on) did: snapshots read from now on carry it
 * as committed. Called with snap_mu held, right after the COMMIT. */
static void count_committed(store_t *s, const batch_t *b) {
    for (size_t i = 0; i < b->folded->n; i++) {
        const bump_t *f = &b->folded->items[i];
        bump_t *c = store_bump_get(&s->committed, f->upstream_id);
        /* Without memory the overlay counts these twice until the next restart: a display
         * error, never a write error. */
        if (!c) continue;
        c->success += f->success;
        c->failed += f->failed;
    }
    for (const config_item_t *it = b->config; it; it = it->next)
        if (it->seq > s->config_seq_written) s->config_seq_written = it->seq;
}

/* ---- faults ---- */

static void report_drops(store_t *s, uint64_t dropped_total, size_t max, int64_t now, int force);

static size_t queued_rows(store_t *s) {
    pthread_mutex_lock(&s->queue_mu);
    size_t n = s->queue_depth;
    pthread_mutex_unlock(&s->queue_mu);
    return n;
}

static uint64_t dropped_rows(store_t *s) {
    pthread_mutex_lock(&s->queue_mu);
    uint64_t n = s->dropped_total;
    pthread_mutex_unlock(&s->queue_mu);
    return n;
}

/* The problem `what` is there (detail says how): said when it starts, then at most every
 * FAULT_LOG_NS while it lasts. */
static void fault_on(store_t *s, store_fault_t *f, const char *what, const char *detail,
                     size_t held, uint64_t dropped_before) {
    int64_t now = util_now_mono_ns();
    snprintf(f->detail, sizeof f->detail, "%s", detail);
    if (!f->active) {
        f->active = 1;
        f->since_ns = f->logged_ns = now;
        f->dropped_before = dropped_before;
        route_log(LOG_WARN, "store: %s: %s (%zu record(s) held, retrying)", what, f->detail, held);
        return;
    }
    if (now - f->logged_ns < FAULT_LOG_NS) return;
    f->logged_ns = now;
    route_log(LOG_WARN, "store: %s for %.0f s: %s (%zu record(s) held, %llu dropped so far)", what,
              (double)(now - f->since_ns) / 1e9, f->detail, held,
              (unsigned long long)(dropped_rows(s) - f->dropped_before));
}

/* The problem is over: said once, with what it cost. late: rows that waited it out. */
static void fault_off(store_t *s, store_fault_t *f, const char *what, size_t late) {
    if (!f->active) return;
    f->active = 0;
    route_log(LOG_INFO, "store: %s is over after %.1f s: %zu record(s) written late, %llu dropped",
              what, (double)(util_now_mono_ns() - f->since_ns) / 1e9, late,
              (unsigned long long)(dropped_rows(s) - f->dropped_before));
}

/* Errors a retry can outlive: a lock, a full disk, a file that cannot be written now. Others
 * (a constraint, a value too big) belong to the row. */
static int transient(int rc) {
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
    case SQLITE_PERM:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_INTERRUPT:
        return 1;
    default:
        return 0;
    }
}

static void describe(char *out, size_t cap, int rc, const char *msg) {
    const char *what = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED
                           ? "the database is locked by another connection"
                       : (rc & 0xff) == SQLITE_FULL     ? "the disk is full"
                       : (rc & 0xff) == SQLITE_READONLY ? "the database cannot be written"
                       : (rc & 0xff) == SQLITE_IOERR    ? "I/O error"
                                                        : "error";
    snprintf(out, cap, "%s (%s)", what, msg);
}

/* The database, its WAL and its shared-memory index must be writable before SQLite writes or
 * even reads: the index is memory-mapped, and touching the mapping of a file that became
 * unwritable (chattr +i) raises SIGBUS instead of returning an error. */
static int files_writable(store_t *s, char *why, size_t cap) {
    const char *paths[] = {s->path_db, s->path_wal, s->path_shm};
    for (size_t i = 0; i < STORE_COUNT(paths); i++) {
        if (!paths[i] || access(paths[i], W_OK) == 0 || errno == ENOENT) continue;
        snprintf(why, cap, "%s is not writable (%s)", paths[i], strerror(errno));
        return 0;
    }
    return 1;
}

/* ---- writing a batch ---- */

/* A group commit is milliseconds of CPU: about 10 us a row with the records indexes, then the
 * COMMIT's WAL writes (0.5 to 1.5 ms at a few thousand requests a second) and, every 16 MB of
 * WAL, a checkpoint (20 ms and more). On a core shared with the loop, a request that arrives
 * meanwhile waits for the scheduler to preempt this thread, up to a slice (0.75 to 3 ms: the
 * benchmark's -c1 p99), whatever its nice value. So the writer offers the core every
 * WRITER_SLICE_NS, between rows, between frees and before each file write (the VFS's pacer):
 * when the loop is runnable it goes first, when it is not sched_yield returns at once. Only
 * while the writer keeps up: past WRITER_YIELD_BACKLOG rows queued behind the batch it stops
 * yielding and takes its scheduler share (measured on one saturated core, yielding always let
 * the queue pass its bound and drop 40% of the rows). The backlog then settles near that mark,
 * never past it for want of CPU. The loop offering the core back (a uv_check that yields
 * while a batch is in hand) was tried: the -c32 JSON p99 went from 5.2 to 3.3 ms, but SSE at
 * full load lost 10 to 20% of its rate to the switches. */
#define WRITER_SLICE_NS      (100 * 1000LL)
#define WRITER_YIELD_BACKLOG 2048

static void writer_pace(void *arg) {
    store_t *s = arg;
    int64_t now = util_now_mono_ns();
    if (now - s->slice_start_ns < WRITER_SLICE_NS) return;
    if (queued_rows(s) < WRITER_YIELD_BACKLOG) sched_yield();
    s->slice_start_ns = util_now_mono_ns();
}

/* One row on its own: 0, or the transient error that fails the batch; a row refused for
 * good is counted in *bad and logged. */
static int write_one(store_t *s, const store_record_t *r, size_t *bad) {
    if (write_record(s, r) == 0) return 0;
    int code = sqlite3_extended_errcode(s->writer_db);
    if (transient(code)) return code;
    (*bad)++;
    route_log_limited(&s->lost_log, LOG_ERROR, "store: a record cannot be written: %s",
                      sqlite3_errmsg(s->writer_db));
    return 0;
}

/* 0 committed; else the SQLite code of a failure a retry may outlive (rolled back, detail in
 * why). Rows failing for a reason of their own are left out and counted as dropped. */
static int write_batch(store_t *s, const batch_t *b, char *why, size_t cap) {
    sqlite3 *db = s->writer_db;
    int rc = store_step_reset(s->w_begin);
    if (rc != SQLITE_DONE) {
        describe(why, cap, sqlite3_extended_errcode(db), sqlite3_errmsg(db));
        return rc ? rc : SQLITE_ERROR;
    }
    size_t bad_rows = 0;
    int fail = 0;
    for (const store_record_t *r = b->records; r && !fail;) {
        writer_pace(s);
        const store_record_t *group = r;
        int n = 0;
        for (; n < RECORD_GROUP && r; n++)
            r = r->queue_next;
        if (n == RECORD_GROUP && write_record_group(s, group) == 0) continue;
        if (n == RECORD_GROUP && transient(sqlite3_extended_errcode(db))) {
            fail = sqlite3_extended_errcode(db);
            break;
        }
        /* The tail of the batch, or a group with a row the database refuses (too big, say):
         * one by one, so that only that row is lost. */
        for (const store_record_t *g = group; g != r && !fail; g = g->queue_next)
            fail = write_one(s, g, &bad_rows);
    }
    for (size_t i = 0; i < b->folded->n && !fail; i++)
        if (write_counts(s, &b->folded->items[i]) != 0 && transient(sqlite3_extended_errcode(db)))
            fail = sqlite3_extended_errcode(db);
    for (const config_item_t *it = b->config; it && !fail; it = it->next)
        if (write_config(s, it) != 0 && transient(sqlite3_extended_errcode(db)))
            fail = sqlite3_extended_errcode(db);
    if (!fail) {
        pthread_mutex_lock(&s->snap_mu);
        rc = store_step_reset(s->w_commit);
        if (rc == SQLITE_DONE) count_committed(s, b);
        pthread_mutex_unlock(&s->snap_mu);
        if (rc == SQLITE_DONE) {
            if (bad_rows) {
                pthread_mutex_lock(&s->queue_mu);
                s->dropped_total += bad_rows;
                pthread_mutex_unlock(&s->queue_mu);
            }
            return 0;
        }
        fail = sqlite3_extended_errcode(db);
    }
    describe(why, cap, fail, sqlite3_errmsg(db));
    store_step_reset(s->w_rollback);
    return fail ? fail : SQLITE_ERROR;
}

/* Waits up to ns, or until store_close asks. */
static void retry_wait(store_t *s, int64_t ns) {
    struct timespec until;
    int64_t at = util_now_mono_ns() + ns;
    until.tv_sec = (time_t)(at / 1000000000);
    until.tv_nsec = (long)(at % 1000000000);
    pthread_mutex_lock(&s->queue_mu);
    if (!s->stopping) pthread_cond_timedwait(&s->queue_cond, &s->queue_mu, &until);
    pthread_mutex_unlock(&s->queue_mu);
}

static int stopping(store_t *s) {
    pthread_mutex_lock(&s->queue_mu);
    int stop = s->stopping;
    pthread_mutex_unlock(&s->queue_mu);
    return stop;
}

static void checkpoint(store_t *s) {
    if (s->wal_pages < s->wal_checkpoint_pages) return;
    /* PASSIVE never waits on a reader; the next write restarts the WAL once it is all in
     * the database file. */
    int log_frames = 0, done_frames = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->writer_db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                       &done_frames);
    s->wal_pages = 0;
    char why[256];
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        describe(why, sizeof why, sqlite3_extended_errcode(s->writer_db),
                 sqlite3_errmsg(s->writer_db));
        fault_on(s, &s->checkpoint_fault, "WAL checkpoint failing", why, queued_rows(s),
                 dropped_rows(s));
        return;
    }
    fault_off(s, &s->checkpoint_fault, "the WAL checkpoint failure", 0);
    int64_t wal_bytes = (int64_t)log_frames * s->page_size;
    /* All of it copied, the WAL starts over at the next write (and shrinks to
     * WAL_KEEP_BYTES): a large WAL is a problem only while part of it cannot be copied. */
    if (wal_bytes > WAL_ALERT_BYTES && done_frames < log_frames) {
        snprintf(why, sizeof why, "the WAL holds %lld MB, %d of %d frames checkpointed",
                 (long long)(wal_bytes >> 20), done_frames, log_frames);
        fault_on(s, &s->wal_fault, "WAL too large", why, queued_rows(s), dropped_rows(s));
    } else {
        fault_off(s, &s->wal_fault, "the WAL size problem", 0);
    }
}

/* Writes the batch, retrying with backoff for as long as the fault lasts (the queue keeps
 * filling within its bound meanwhile); only a store_close that waited STOP_GIVE_UP_NS drops
 * it. */
static void finish_batch(store_t *s, batch_t *b) {
    int64_t backoff = RETRY_MIN_NS, stop_since = 0;
    int rc;
    char why[256];
    /* Rows dropped from now on are the fault's: the first attempt may wait a while. */
    uint64_t dropped_before = dropped_rows(s);
    for (;;) {
        rc = files_writable(s, why, sizeof why) ? write_batch(s, b, why, sizeof why) : SQLITE_PERM;
        if (rc == 0) break;
        fault_on(s, &s->write_fault, "writes failing", why, b->n_records + queued_rows(s),
                 dropped_before);
        pthread_mutex_lock(&s->queue_mu);
        s->faulted = 1;
        uint64_t dropped = s->dropped_total;
        size_t max = s->queue_max;
        pthread_mutex_unlock(&s->queue_mu);
        report_drops(s, dropped, max, util_now_mono_ns(), 0);
        if (stopping(s)) {
            int64_t now = util_now_mono_ns();
            if (!stop_since) stop_since = now;
            if (now - stop_since >= STOP_GIVE_UP_NS) break;
        }
        retry_wait(s, backoff);
        backoff = backoff * 2 > RETRY_MAX_NS ? RETRY_MAX_NS : backoff * 2;
    }
    if (rc) {
        route_log(LOG_ERROR,
                  "store: stopping with the database still failing: %zu record(s) and the "
                  "counters of %zu upstream(s) lost",
                  b->n_records, b->folded->n);
        /* Lost is done too: the loop's view then converges on what the file has. */
        pthread_mutex_lock(&s->snap_mu);
        count_committed(s, b);
        pthread_mutex_unlock(&s->snap_mu);
    } else if (s->write_fault.active) {
        size_t late = b->n_records + queued_rows(s);
        fault_off(s, &s->write_fault, "the write failure", late);
        pthread_mutex_lock(&s->queue_mu);
        s->faulted = 0;
        s->late_total += late;
        pthread_mutex_unlock(&s->queue_mu);
    }
    /* Thousands of frees after a large batch are a millisecond: paced like the rows. */
    for (store_record_t *next; b->records; b->records = next) {
        next = b->records->queue_next;
        store_record_free(b->records);
        writer_pace(s);
    }
    while (b->config) {
        config_item_t *it = b->config;
        b->config = it->next;
        store_config_item_free(it);
    }
    b->folded->n = 0;
    pthread_mutex_lock(&s->queue_mu);
    if (!rc)
        s->written_total += b->n_records;
    else
        s->dropped_total += b->n_records;
    pthread_mutex_unlock(&s->queue_mu);
    if (!rc) checkpoint(s);
}

/* Called with queue_mu held, when the writer is about to sleep on an empty queue: after a
 * burst, the memory its rows (and the loop's streams) held goes back to the system, which
 * glibc does not do by itself for blocks freed in the middle of the heap (the issue measured
 * 371 MB kept after bursts). malloc_trim covers every arena, the loop's too, from here. */
static void give_memory_back(store_t *s, int64_t now) {
    if (s->trim_rows < TRIM_AFTER_ROWS && s->backlog_peak_bytes < TRIM_AFTER_BYTES) return;
    if (now - s->last_trim_ns < TRIM_EVERY_NS) return;
    s->trim_rows = 0;
    s->backlog_peak_bytes = 0;
    s->last_trim_ns = now;
    pthread_mutex_unlock(&s->queue_mu);
    malloc_trim(0);
    pthread_mutex_lock(&s->queue_mu);
}

/* Retention's deletes grow the WAL as the writer's batches do. */
void store_writer_checkpoint_if_due(store_t *s) {
    checkpoint(s);
}

/* ---- the external-change poll ---- */

static void poll_changes(store_t *s, int64_t now) {
    s->next_poll_ns = now + STORE_POLL_NS;
    if (sqlite3_step(s->w_version) != SQLITE_ROW) {
        sqlite3_reset(s->w_version);
        return;
    }
    int64_t version = sqlite3_column_int64(s->w_version, 0);
    sqlite3_reset(s->w_version);
    if (version == s->data_version) return;
    store_snapshot_t *snap = store_snapshot_read_on(s, s->w_read_begin, s->w_read_end,
                                                    s->w_sel_config, s->w_sel_upstreams);
    if (!snap) return; /* the version stays old: the next poll tries again */
    s->data_version = version;
    snap->from_poller = 1;
    pthread_mutex_lock(&s->queue_mu);
    s->external_reloads++;
    pthread_mutex_unlock(&s->queue_mu);
    store_snapshot_t *replaced = NULL;
    pthread_mutex_lock(&s->inbox_mu);
    if (s->attached) {
        replaced = s->inbox; /* never installed: the newer one supersedes it */
        s->inbox = snap;
        snap = NULL;
        uv_async_send(&s->async);
    }
    pthread_mutex_unlock(&s->inbox_mu);
    store_snapshot_free(replaced);
    store_snapshot_free(snap);
}

static void report_drops(store_t *s, uint64_t dropped_total, size_t max, int64_t now, int force) {
    if (dropped_total == s->dropped_logged) return;
    if (!force && now - s->last_drop_log_ns < DROP_LOG_NS) return;
    route_log(LOG_WARN,
              "store: records queue full (records_queue_max=%zu, records_queue_max_mb=%zu): %llu "
              "oldest record(s) dropped unwritten (%llu in all)",
              max, s->queue_bytes_max >> 20,
              (unsigned long long)(dropped_total - s->dropped_logged),
              (unsigned long long)dropped_total);
    s->dropped_logged = dropped_total;
    s->last_drop_log_ns = now;
}

static struct timespec mono_deadline(int64_t ns) {
    return (struct timespec){.tv_sec = (time_t)(ns / 1000000000),
                             .tv_nsec = (long)(ns % 1000000000)};
}

/* Below the event loop in the scheduler's eyes: on a core shared with the loop, a group commit
 * (milliseconds of SQLite work) would otherwise take whole time slices from requests in flight
 * and show up as their p99. With nice WRITER_NICE the writer still gets about two fifths of a
 * saturated core (CFS weights 655 vs 1024). Measured on one core at full load: nice 5 (a
 * quarter) kept up with JSON rows but not with SSE rows (about 2.5 KB each, 29k/s: the queue
 * passed its 64 MiB bound and 18% of the records were dropped); nice 2 keeps up with both at
 * the same request rate, and nice 0 costs 8% of the JSON rate for nothing more. Linux applies
 * a thread's nice value to that thread alone. */
#define WRITER_NICE 2

static void *writer_main(void *arg) {
    store_t *s = arg;
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), WRITER_NICE) != 0)
        route_log(LOG_DEBUG, "store: writer priority unchanged: %s", strerror(errno));
    s->last_drop_log_ns = util_now_mono_ns() - DROP_LOG_NS;
    int64_t last_commit_ns = 0;
    for (;;) {
        int64_t now = util_now_mono_ns();
        pthread_mutex_lock(&s->queue_mu);
        while (!s->queue_head && !s->queue_folded.n && !s->queue_config && !s->stopping) {
            if (s->polling && now >= s->next_poll_ns) break;
            give_memory_back(s, now);
            if (s->queue_head || s->queue_folded.n || s->queue_config || s->stopping) break;
            s->writer_sleeping = 1;
            if (s->polling) {
                struct timespec until = mono_deadline(s->next_poll_ns);
                pthread_cond_timedwait(&s->queue_cond, &s->queue_mu, &until);
            } else {
                pthread_cond_wait(&s->queue_cond, &s->queue_mu);
            }
            s->writer_sleeping = 0;
            now = util_now_mono_ns();
        }
        /* Let a batch grow to its size or its age; nobody wakes this wait but store_close. */
        while (s->queue_depth < WRITE_BATCH_MAX && !s->stopping &&
               now - last_commit_ns < GROUP_COMMIT_NS) {
            struct timespec until = mono_deadline(last_commit_ns + GROUP_COMMIT_NS);
            pthread_cond_timedwait(&s->queue_cond, &s->queue_mu, &until);
            now = util_now_mono_ns();
        }
        batch_t b = {.records = s->queue_head, .config = s->queue_config, .folded = &s->w_folded};
        if (s->queue_bytes > s->backlog_peak_bytes) s->backlog_peak_bytes = s->queue_bytes;
        if (s->queue_depth <= WRITE_BATCH_MAX && s->queue_bytes <= WRITE_BATCH_BYTES) {
            b.n_records = s->queue_depth;
            s->queue_head = s->queue_tail = NULL;
            s->queue_bytes = 0;
        } else {
            store_record_t *last = s->queue_head;
            size_t bytes = last->queue_bytes;
            for (b.n_records = 1; b.n_records < WRITE_BATCH_MAX && last->queue_next &&
                                  bytes + last->queue_next->queue_bytes <= WRITE_BATCH_BYTES;
                 b.n_records++) {
                last = last->queue_next;
                bytes += last->queue_bytes;
            }
            s->queue_bytes -= bytes;
            s->queue_head = last->queue_next;
            if (!s->queue_head) s->queue_tail = NULL;
            last->queue_next = NULL;
        }
        s->queue_depth -= b.n_records;
        s->trim_rows += b.n_records;
        s->queue_config = NULL;
        s->queue_config_tail = &s->queue_config;
        /* Swapped, not copied: both tables keep their memory from batch to batch. */
        bump_table_t folded = s->queue_folded;
        s->queue_folded = s->w_folded;
        s->w_folded = folded;
        int stop = s->stopping && !b.records && !b.config && !folded.n;
        int polling = s->polling && !s->stopping;
        uint64_t dropped = s->dropped_total;
        size_t max = s->queue_max;
        pthread_mutex_unlock(&s->queue_mu);

        if (b.records || b.config || b.folded->n) {
            finish_batch(s, &b);
            last_commit_ns = util_now_mono_ns();
        }
        report_drops(s, dropped, max, now, stop);
        if (stop) break;
        char why[256];
        /* A snapshot read touches the mapped index as a write does (see files_writable). */
        if (polling && (now = util_now_mono_ns()) >= s->next_poll_ns) {
            if (files_writable(s, why, sizeof why))
                poll_changes(s, now);
            else
                s->next_poll_ns = now + STORE_POLL_NS;
        }
        /* Deletes go through the guarded VFS too: a fault makes them fail, never a SIGBUS. */
        if (polling) store_retention_run(s, util_now_mono_ns());
    }
    return NULL;
}
