/* retention.c: config key records_retention_days: the writer thread deletes the records older
 * than that many days, a bounded batch at a time, between its own group commits.
 *
 * A pass starts at most every RETENTION_PASS_NS (three times a minute); it deletes up to
 * RETENTION_BATCH_ROWS of the oldest rows per statement, each statement its own short
 * transaction (about 15 ms for 1,000 rows of a 1.5 GB table), and while batches come back full
 * the next one follows RETENTION_GAP_NS later, so the writer's record batches run in between
 * and the disk sees a trickle: 1,000 rows a second, 86 million a day, a backlog of a million
 * old rows gone in about 17 minutes, the write lock never held for more than one batch.
 * The rows are found through idx_records_created_at (julianday, so any UTC offset compares as
 * an instant); a row whose created_at does not parse is never deleted. Freed pages are reused
 * by new rows (the file does not shrink; VACUUM does that, offline).
 *
 * Owns: the schedule and the DELETE. Must not: run on another thread than the writer, delete in
 * one statement more than a batch, or run in a one-shot command (the writer calls it only while
 * a loop is attached). */
#include <stdio.h>

#include "route/util.h"
#include "store_internal.h"

#define RETENTION_BATCH_ROWS 1000
#define RETENTION_PASS_NS    (20 * 1000000000LL)
#define RETENTION_GAP_NS     (1000 * 1000000LL)
#define DAY_NS               (86400 * 1000000000LL)

void store_loop_set_records_retention(store_t *s, int64_t days) {
    pthread_mutex_lock(&s->queue_mu);
    s->retention_days = days > 0 ? days : 0;
    pthread_mutex_unlock(&s->queue_mu);
}

/* One batch; the rows it deleted, or -1. */
static int delete_batch(store_t *s, int64_t cutoff_wall_ns) {
    char cutoff[64];
    util_format_db_time(cutoff, sizeof cutoff, cutoff_wall_ns);
    sqlite3_stmt *st = store_query(
        s->writer_db,
        "DELETE FROM `records` WHERE rowid IN (SELECT rowid FROM `records` WHERE "
        "julianday(`created_at`)<julianday(?1) ORDER BY julianday(`created_at`) LIMIT ?2)",
        "si", cutoff, (int64_t)RETENTION_BATCH_ROWS);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    sqlite3_finalize(st);
    /* A batch writes about its rows' size to the WAL (Debian's SQLite zeroes freed content):
     * without the writer's checkpoint a catch-up would grow the WAL by the whole backlog. */
    store_writer_checkpoint_if_due(s);
    if (rc == SQLITE_DONE) return sqlite3_changes(s->writer_db);
    route_log_limited(&s->retention_log, LOG_WARN, "store: deleting old records failed: %s",
                      sqlite3_errmsg(s->writer_db));
    return -1;
}

static void end_pass(store_t *s, int64_t days, int64_t now) {
    if (s->retention_pass_deleted)
        route_log(LOG_INFO,
                  "store: records_retention_days=%lld: deleted %lld record(s) in %lld batch(es) "
                  "of at most %d",
                  (long long)days, (long long)s->retention_pass_deleted,
                  (long long)s->retention_pass_batches, RETENTION_BATCH_ROWS);
    s->retention_pass_deleted = s->retention_pass_batches = 0;
    s->retention_next_ns = now + RETENTION_PASS_NS;
}

void store_retention_run(store_t *s, int64_t now) {
    if (now < s->retention_next_ns) return;
    pthread_mutex_lock(&s->queue_mu);
    int64_t days = s->retention_days;
    pthread_mutex_unlock(&s->queue_mu);
    /* Off: nothing is scheduled, so turning it on starts a pass at once. */
    if (days <= 0) return;
    int n = delete_batch(s, util_now_wall_ns() - days * DAY_NS);
    if (n > 0) {
        s->retention_pass_deleted += n;
        s->retention_pass_batches++;
    }
    if (n == RETENTION_BATCH_ROWS)
        s->retention_next_ns = now + RETENTION_GAP_NS;
    else
        end_pass(s, days, now);
}
