/* writer.c: the writer thread: everything the loop queues (records, counter bumps, config
 * values) goes to the database in group commits, and, between batches, the poll that notices
 * other connections' commits and hands a fresh snapshot to the loop.
 *
 * Group commit: each pass takes whatever is queued (up to WRITE_BATCH_MAX rows), the bumps
 * folded per upstream since the last pass, and the config values, and writes them in one
 * transaction with prepared BEGIN/COMMIT: one INSERT per row, one UPDATE per upstream. The
 * loop wakes the thread only when it was asleep on an empty queue. The queue is bounded
 * (records_queue_max): past it the oldest rows go, counted and reported at most every 10 s.
 *
 * Owns: the writer connection, its statements and WAL checkpoints (its autocheckpoint is off:
 * a PASSIVE checkpoint past WAL_CHECKPOINT_BYTES, from this thread, after a commit), the queue,
 * the committed figures snapshots are stamped with, the external-change poll.
 * Must not: let the loop wait on anything but a pointer swap under queue_mu, drop a row while
 * the queue is within its bound, lose a queued item on store_close, or log a key, a token or a
 * config value. */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

#include "route/util.h"
#include "store_internal.h"

#define WRITE_BATCH_MAX      4096
#define WRITE_ATTEMPTS       3
#define WAL_CHECKPOINT_BYTES (16 << 20)
#define DROP_LOG_NS          (10 * 1000000000LL)
#define WRITER_CACHE_KIB                                                                           \
    16384 /* a whole group commit (up to 50 ms of rows) fits without spilling */
/* Commits at most this often, each with what accumulated meanwhile: at a moderate rate (a
 * request every 100 us) a wake-up per row would mean a transaction per row, the cost the issue
 * measured. A row waits at most this long for its commit (unless the batch fills first). */
#define GROUP_COMMIT_NS (50 * 1000000LL)

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
        "INSERT INTO `records` (" RECORD_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
    if (!(s->writer_db = store_db_open(path, STORE_BUSY_TIMEOUT_MS, err))) return -1;
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA cache_size=-%d", WRITER_CACHE_KIB);
    store_exec(s->writer_db, pragma);
    /* Replaces the autocheckpoint: the WAL is checkpointed by this thread, between batches. */
    sqlite3_wal_hook(s->writer_db, on_wal_commit, s);
    for (size_t i = 0; i < STORE_COUNT(out); i++)
        if (store_prepare(s->writer_db, sql[i], out[i])) {
            store_set_err(err, s->writer_db);
            return -1;
        }
    sqlite3_stmt *ps = store_query(s->writer_db, "PRAGMA page_size", "");
    int page_size = ps && sqlite3_step(ps) == SQLITE_ROW ? sqlite3_column_int(ps, 0) : 4096;
    sqlite3_finalize(ps);
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
    sqlite3_stmt *stmts[] = {s->w_record,   s->w_counts,     s->w_config,       s->w_begin,
                             s->w_commit,   s->w_rollback,   s->w_version,      s->w_read_begin,
                             s->w_read_end, s->w_sel_config, s->w_sel_upstreams};
    for (size_t i = 0; i < STORE_COUNT(stmts); i++)
        sqlite3_finalize(stmts[i]);
    sqlite3_close(s->writer_db);
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

static int write_record(store_t *s, const store_record_t *r) {
    sqlite3_stmt *st = s->w_record;
    /* Empty strings, not NULL, as the Go program wrote them. */
    int rc = store_bind(st, "stsSSisiisiiiiss", r->id, r->created_at, r->ip ?: "", r->body,
                        text_len(r->body, r->body_len), r->response,
                        text_len(r->response, r->response_len), r->elapsed_ns, r->model ?: "",
                        (int64_t)r->status, r->upstream_id, r->upstream_endpoint ?: "",
                        r->prompt_tokens, r->completion_tokens, r->total_tokens,
                        r->response_time_ns, r->user_agent ?: "", r->error ?: "");
    /* A count nobody reported is NULL, never a 0 that would read as "free". */
    for (int col = 11; r->usage_missing && rc == SQLITE_OK && col <= 13; col++)
        rc = sqlite3_bind_null(st, col);
    if (rc == SQLITE_OK)
        rc = r->cached_tokens >= 0 ? sqlite3_bind_int64(st, 17, r->cached_tokens)
                                   : sqlite3_bind_null(st, 17);
    if (rc == SQLITE_OK)
        rc = r->reasoning_tokens >= 0 ? sqlite3_bind_int64(st, 18, r->reasoning_tokens)
                                      : sqlite3_bind_null(st, 18);
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

static int write_batch(store_t *s, const batch_t *b) {
    sqlite3 *db = s->writer_db;
    if (store_step_reset(s->w_begin) != SQLITE_DONE) {
        route_log_limited(&s->write_log, LOG_WARN, "store: cannot start a write: %s",
                          sqlite3_errmsg(db));
        return -1;
    }
    size_t failed = 0;
    for (const store_record_t *r = b->records; r; r = r->queue_next)
        failed += write_record(s, r) != 0;
    for (size_t i = 0; i < b->folded->n; i++)
        failed += write_counts(s, &b->folded->items[i]) != 0;
    for (const config_item_t *it = b->config; it; it = it->next)
        failed += write_config(s, it) != 0;
    if (failed)
        route_log_limited(&s->write_log, LOG_ERROR, "store: %zu queued write(s) failed: %s", failed,
                          sqlite3_errmsg(db));
    pthread_mutex_lock(&s->snap_mu);
    int rc = store_step_reset(s->w_commit);
    if (rc == SQLITE_DONE) count_committed(s, b);
    pthread_mutex_unlock(&s->snap_mu);
    if (rc == SQLITE_DONE) return 0;
    route_log_limited(&s->write_log, LOG_WARN, "store: committing a batch failed: %s",
                      sqlite3_errmsg(db));
    store_step_reset(s->w_rollback);
    return -1;
}

static void finish_batch(store_t *s, batch_t *b) {
    int rc = -1;
    for (int attempt = 0; rc && attempt < WRITE_ATTEMPTS; attempt++)
        rc = write_batch(s, b);
    if (rc) {
        route_log_limited(&s->lost_log, LOG_ERROR,
                          "store: %zu record(s) and the counters of %zu upstream(s) lost",
                          b->n_records, b->folded->n);
        /* Lost is done too: the loop's view then converges on what the file has. */
        pthread_mutex_lock(&s->snap_mu);
        count_committed(s, b);
        pthread_mutex_unlock(&s->snap_mu);
    }
    for (store_record_t *next; b->records; b->records = next) {
        next = b->records->queue_next;
        store_record_free(b->records);
    }
    while (b->config) {
        config_item_t *it = b->config;
        b->config = it->next;
        store_config_item_free(it);
    }
    b->folded->n = 0;
    pthread_mutex_lock(&s->queue_mu);
    if (!rc) s->written_total += b->n_records;
    pthread_mutex_unlock(&s->queue_mu);

    if (s->wal_pages >= s->wal_checkpoint_pages) {
        /* PASSIVE never waits on a reader; the next write restarts the WAL once it is all in
         * the database file. */
        sqlite3_wal_checkpoint_v2(s->writer_db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        s->wal_pages = 0;
    }
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
 * and show up as their p99. With nice WRITER_NICE the writer still gets about a quarter of a
 * saturated core (CFS weights 335 vs 1024), several times what the rows need at full load, so
 * the queue still drains. Linux applies a thread's nice value to that thread alone. */
#define WRITER_NICE 5

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
        if (s->queue_depth <= WRITE_BATCH_MAX) {
            b.n_records = s->queue_depth;
            s->queue_head = s->queue_tail = NULL;
            s->queue_bytes = 0;
        } else {
            store_record_t *last = s->queue_head;
            s->queue_bytes -= last->queue_bytes;
            for (b.n_records = 1; b.n_records < WRITE_BATCH_MAX; b.n_records++) {
                last = last->queue_next;
                s->queue_bytes -= last->queue_bytes;
            }
            s->queue_head = last->queue_next;
            last->queue_next = NULL;
        }
        s->queue_depth -= b.n_records;
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
        if (polling && (now = util_now_mono_ns()) >= s->next_poll_ns) poll_changes(s, now);
    }
    return NULL;
}
