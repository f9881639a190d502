/* sync.c: the one-shot calls of the CLI, start-up and the admin API's work threads: upstream
 * add/update/delete/list, config get/set/list, the records listing (filtered, paged, or
 * streamed row by row for -export), and consistent snapshots for the loop
 * (store_snapshot_read).
 *
 * Owns: the sync connection and its mutex; the SQL of each call.
 * Must not: run on the event loop thread (every call may wait on the database lock for up to
 * the busy timeout), touch the loop's cache (a snapshot is handed to the loop, which installs
 * it), or log a key, a token or a config value. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"
#include "store_internal.h"

int store_add_upstream(store_t *s, const char *sk, const char *endpoint, int64_t *id) {
    int ret = STORE_ERROR;
    int64_t now = util_now_wall_ns();
    pthread_mutex_lock(&s->sync_mu);
    sqlite3 *db = s->sync_db;
    if (store_exec(db, "BEGIN IMMEDIATE")) goto out;
    sqlite3_stmt *st = store_query(db,
                                   "SELECT `id`,`deleted_at` IS NULL FROM `openai_upstreams` "
                                   "WHERE `sk`=? AND `endpoint`=?",
                                   "ss", sk, endpoint);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    int64_t found = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    int live = rc == SQLITE_ROW && sqlite3_column_int(st, 1);
    sqlite3_finalize(st);
    if (live) {
        ret = STORE_EXISTS;
    } else if (rc == SQLITE_ROW) {
        /* A revived pair starts over like a new one: fresh counters, never succeeded. */
        if (store_run(
                db,
                "UPDATE `openai_upstreams` SET `created_at`=?1,`updated_at`=?1,`deleted_at`=NULL,"
                "`success_count`=0,`failed_count`=0,`last_call_success_time`=NULL WHERE `id`=?2",
                "ti", now, found) == SQLITE_DONE) {
            *id = found;
            ret = STORE_OK;
        }
    } else if (rc == SQLITE_DONE &&
               store_run(
                   db,
                   "INSERT INTO `openai_upstreams` (`created_at`,`updated_at`,`sk`,`endpoint`,"
                   "`success_count`,`failed_count`) VALUES (?1,?1,?2,?3,0,0)",
                   "tss", now, sk, endpoint) == SQLITE_DONE) {
        *id = sqlite3_last_insert_rowid(db);
        ret = STORE_OK;
    }
    store_exec(db, ret == STORE_ERROR ? "ROLLBACK" : "COMMIT");
out:
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_update_upstream(store_t *s, int64_t id, const char *sk, const char *endpoint) {
    int ret = STORE_ERROR;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3 *db = s->sync_db;
    if (store_exec(db, "BEGIN IMMEDIATE")) goto out;
    /* A soft-deleted row still holds its (sk, endpoint) in the unique index; being invisible,
     * it must not block the pair, so it goes for good. */
    int rc = store_run(db,
                       "DELETE FROM `openai_upstreams` WHERE `deleted_at` IS NOT NULL AND "
                       "(`sk`,`endpoint`)=(SELECT COALESCE(?1,`sk`),COALESCE(?2,`endpoint`) "
                       "FROM `openai_upstreams` WHERE `id`=?3 AND `deleted_at` IS NULL)",
                       "ssi", sk, endpoint, id);
    if (rc == SQLITE_DONE)
        rc = store_run(db,
                       "UPDATE `openai_upstreams` SET `sk`=COALESCE(?1,`sk`),"
                       "`endpoint`=COALESCE(?2,`endpoint`),`updated_at`=?3 "
                       "WHERE `id`=?4 AND `deleted_at` IS NULL",
                       "ssti", sk, endpoint, util_now_wall_ns(), id);
    if (rc == SQLITE_DONE)
        ret = sqlite3_changes(db) ? STORE_OK : STORE_NOT_FOUND;
    else if (rc == SQLITE_CONSTRAINT)
        ret = STORE_EXISTS;
    store_exec(db, ret == STORE_OK ? "COMMIT" : "ROLLBACK");
out:
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_delete_upstream(store_t *s, int64_t id) {
    pthread_mutex_lock(&s->sync_mu);
    int rc = store_run(
        s->sync_db,
        "UPDATE `openai_upstreams` SET `deleted_at`=? WHERE `id`=? AND `deleted_at` IS NULL", "ti",
        util_now_wall_ns(), id);
    int ret = rc != SQLITE_DONE             ? STORE_ERROR
              : sqlite3_changes(s->sync_db) ? STORE_OK
                                            : STORE_NOT_FOUND;
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_list_upstreams(store_t *s, store_upstream_list_t *out) {
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = store_query(s->sync_db, UPSTREAM_SELECT, "");
    int rc = st ? store_read_upstreams(st, out) : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    return rc ? STORE_ERROR : STORE_OK;
}

char *store_config_get(store_t *s, const char *key) {
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = store_query(
        s->sync_db, "SELECT `value` FROM `config_kvs` WHERE `key`=? AND `deleted_at` IS NULL", "s",
        key);
    char *value = NULL;
    if (st && sqlite3_step(st) == SQLITE_ROW)
        value = strdup((const char *)sqlite3_column_text(st, 0) ?: "");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    return value;
}

int store_config_set(store_t *s, const char *key, const char *value) {
    int64_t now = util_now_wall_ns();
    pthread_mutex_lock(&s->sync_mu);
    int rc = store_run(s->sync_db, CONFIG_UPSERT, "ttss", now, now, key, value);
    pthread_mutex_unlock(&s->sync_mu);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERROR;
}

int store_config_each(store_t *s, void (*fn)(void *ud, const char *key, const char *value),
                      void *ud) {
    kv_list_t l;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = store_query(s->sync_db, CONFIG_SELECT, "");
    int rc = st ? store_read_config(st, &l) : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    if (rc) return STORE_ERROR;
    /* Called outside the lock, so fn may use the store. */
    for (size_t i = 0; i < l.n; i++)
        fn(ud, l.items[i].key, l.items[i].value);
    store_kv_list_free(&l);
    return STORE_OK;
}

static store_record_t *read_record(sqlite3_stmt *st) {
    store_record_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    const char *id = (const char *)sqlite3_column_text(st, 0);
    snprintf(r->id, sizeof r->id, "%s", id ? id : "");
    r->created_at = store_column_time(st, 1);
    r->ip = store_column_dup(st, 2, NULL);
    r->body = store_column_dup(st, 3, &r->body_len);
    r->response = store_column_dup(st, 4, &r->response_len);
    r->elapsed_ns = sqlite3_column_int64(st, 5);
    r->model = store_column_dup(st, 6, NULL);
    r->status = sqlite3_column_int(st, 7);
    r->upstream_id = sqlite3_column_int64(st, 8);
    r->upstream_endpoint = store_column_dup(st, 9, NULL);
    r->prompt_tokens = sqlite3_column_int64(st, 10);
    r->completion_tokens = sqlite3_column_int64(st, 11);
    r->total_tokens = sqlite3_column_int64(st, 12);
    r->response_time_ns = sqlite3_column_int64(st, 13);
    r->user_agent = store_column_dup(st, 14, NULL);
    r->error = store_column_dup(st, 15, NULL);
    r->usage_missing = sqlite3_column_type(st, 10) == SQLITE_NULL;
    r->cached_tokens =
        sqlite3_column_type(st, 16) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 16);
    r->reasoning_tokens =
        sqlite3_column_type(st, 17) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 17);
    return r;
}

/* julianday() of the instant, as SQLite computes it (whole milliseconds since the Julian
 * epoch over 86400000), so a bound equals the julianday of a row written at that instant. */
static double julian_day(int64_t wall_ns) {
    int64_t ms = wall_ns / 1000000 + (wall_ns % 1000000 >= 500000);
    return (double)(ms + 210866760000000LL) / 86400000.0;
}

/* The filter's conditions, each a fixed fragment (values are bound, never spliced). The
 * equality ones lead an index of schema.c, (column, julianday(created_at)), that also gives
 * the listing's order, so a page reads only its own rows. A status other than 200 says so
 * in the SQL too: that is how SQLite knows the failures' partial index holds its rows. A 200
 * has no index of its own: nearly every row is one, and the time index pages through them. */
enum { C_MODEL, C_STATUS, C_FAILED, C_UPSTREAM, C_SINCE, C_UNTIL, N_CONDS };
static const struct {
    const char *sql, *index; /* index: the one it leads, for the equality conditions */
} conds[N_CONDS] = {
    [C_MODEL] = {"`model`=?", "idx_records_model"},
    [C_STATUS] = {"`status`=?", NULL},
    [C_FAILED] = {"`status`=? AND `status`<>200", "idx_records_failed"},
    [C_UPSTREAM] = {"`upstream_id`=?", "idx_records_upstream_id"},
    [C_SINCE] = {"julianday(`created_at`)>=?", NULL},
    [C_UNTIL] = {"julianday(`created_at`)<?", NULL},
};
#define TIME_CONDS ((1u << C_SINCE) | (1u << C_UNTIL))

static unsigned filter_conds(const store_record_filter_t *f) {
    if (!f) return 0;
    unsigned status = !f->has_status ? 0 : f->status == 200 ? 1u << C_STATUS : 1u << C_FAILED;
    return (f->model ? 1u << C_MODEL : 0) | status | (f->has_upstream_id ? 1u << C_UPSTREAM : 0) |
           (f->has_since ? 1u << C_SINCE : 0) | (f->has_until ? 1u << C_UNTIL : 0);
}

/* " WHERE a AND b" of the conditions in mask (or ""). */
static void where_sql(unsigned mask, char *sql, size_t cap) {
    size_t len = 0;
    sql[0] = '\0';
    for (int c = 0, n = 0; c < N_CONDS && len < cap; c++)
        if (mask & (1u << c))
            len += (size_t)snprintf(sql + len, cap - len, "%s%s", n++ ? " AND " : " WHERE ",
                                    conds[c].sql);
}

/* Binds the values of the conditions in mask, in where_sql's order, from parameter 1. */
static int bind_conds(sqlite3_stmt *st, const store_record_filter_t *f, unsigned mask) {
    int i = 1, rc = SQLITE_OK;
    for (int c = 0; c < N_CONDS && rc == SQLITE_OK; c++) {
        if (!(mask & (1u << c))) continue;
        switch (c) {
        case C_MODEL:
            rc = sqlite3_bind_text(st, i++, f->model, -1, SQLITE_STATIC);
            break;
        case C_STATUS:
        case C_FAILED:
            rc = sqlite3_bind_int(st, i++, f->status);
            break;
        case C_UPSTREAM:
            rc = sqlite3_bind_int64(st, i++, f->upstream_id);
            break;
        case C_SINCE:
            rc = sqlite3_bind_double(st, i++, julian_day(f->since_ns));
            break;
        case C_UNTIL:
            rc = sqlite3_bind_double(st, i++, julian_day(f->until_ns));
            break;
        }
    }
    return rc == SQLITE_OK ? 0 : -1;
}

/* Rows of an equality condition (and the time bounds) its index holds, counted up to a cap
 * in the index alone (no table reads: a few ms at most). */
#define PROBE_CAP 50000
static int64_t probe_count(sqlite3 *db, const store_record_filter_t *f, int c, unsigned mask) {
    char where[256], sql[512];
    unsigned probe_mask = (1u << c) | (mask & TIME_CONDS);
    where_sql(probe_mask, where, sizeof where);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT 1 FROM `records` INDEXED BY `%s`%s LIMIT %d)",
             conds[c].index, where, PROBE_CAP);
    sqlite3_stmt *st;
    int64_t n = PROBE_CAP;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return n;
    if (bind_conds(st, f, probe_mask) == 0 && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* With two or more equality conditions SQLite, without statistics (no ANALYZE; Debian's
 * build has no STAT4), picks among their indexes blindly, and a rare model combined with a
 * common upstream then reads a fifth of the table: 140 ms on a million rows instead of 1.
 * The index with the fewest matching rows, counted in the index, is the one to walk. */
static const char *choose_index(sqlite3 *db, const store_record_filter_t *f, unsigned mask) {
    const char *best = NULL;
    int64_t best_n = INT64_MAX;
    int eq = 0;
    for (int c = 0; c < N_CONDS; c++)
        eq += conds[c].index && (mask & (1u << c));
    if (eq < 2) return NULL;
    for (int c = 0; c < N_CONDS; c++) {
        if (!conds[c].index || !(mask & (1u << c))) continue;
        int64_t n = probe_count(db, f, c, mask);
        if (n < best_n) {
            best_n = n;
            best = conds[c].index;
        }
    }
    return best;
}

/* SELECT of the filtered rows in the listing's order (the instant, then insertion). */
static sqlite3_stmt *prepare_filtered(sqlite3 *db, const store_record_filter_t *f,
                                      const char *direction, int paged) {
    unsigned mask = filter_conds(f);
    const char *index = choose_index(db, f, mask);
    char where[256], indexed[64] = "", sql[1024];
    where_sql(mask, where, sizeof where);
    if (index) snprintf(indexed, sizeof indexed, " INDEXED BY `%s`", index);
    snprintf(sql, sizeof sql,
             "SELECT " RECORD_COLUMNS " FROM `records`%s%s ORDER BY julianday(`created_at`) %s, "
             "rowid %s%s",
             indexed, where, direction, direction, paged ? " LIMIT ? OFFSET ?" : "");
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return NULL;
    if (bind_conds(st, f, mask) == 0) return st;
    sqlite3_finalize(st);
    return NULL;
}

int store_list_records(store_t *s, int limit, int offset, store_record_t ***out, size_t *n) {
    return store_query_records(s, NULL, limit, offset, out, n);
}

int store_query_records(store_t *s, const store_record_filter_t *f, int limit, int offset,
                        store_record_t ***out, size_t *n) {
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = prepare_filtered(s->sync_db, f, "DESC", 1);
    int next = st ? sqlite3_bind_parameter_count(st) - 1 : 0;
    int rc = st && sqlite3_bind_int64(st, next, limit) == SQLITE_OK &&
                     sqlite3_bind_int64(st, next + 1, offset) == SQLITE_OK
                 ? SQLITE_ROW
                 : SQLITE_ERROR;
    while (rc == SQLITE_ROW && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            store_record_t **items = realloc(*out, cap * sizeof *items);
            if (!items) break;
            *out = items;
        }
        if (!((*out)[*n] = read_record(st))) break;
        ++*n;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    if (rc == SQLITE_DONE) return STORE_OK;
    while (*n)
        store_record_free((*out)[--*n]);
    free(*out);
    *out = NULL;
    return STORE_ERROR;
}

int store_each_record(store_t *s, const store_record_filter_t *f,
                      int (*fn)(void *ud, const store_record_t *r), void *ud) {
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = prepare_filtered(s->sync_db, f, "ASC", 0);
    int rc = st ? SQLITE_ROW : SQLITE_ERROR;
    while (rc == SQLITE_ROW && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_record_t *r = read_record(st);
        int stop = !r || fn(ud, r);
        store_record_free(r);
        if (!r) rc = SQLITE_NOMEM;
        if (stop) break;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? STORE_OK : STORE_ERROR;
}

store_snapshot_t *store_snapshot_read(store_t *s) {
    static const char *const sql[] = {"BEGIN", "COMMIT", CONFIG_SELECT, UPSTREAM_SELECT};
    sqlite3_stmt *st[4] = {0};
    store_snapshot_t *snap = NULL;
    pthread_mutex_lock(&s->sync_mu);
    int ok = 1;
    for (size_t i = 0; ok && i < 4; i++)
        ok = sqlite3_prepare_v2(s->sync_db, sql[i], -1, &st[i], NULL) == SQLITE_OK;
    if (ok) snap = store_snapshot_read_on(s, st[0], st[1], st[2], st[3]);
    for (size_t i = 0; i < 4; i++)
        sqlite3_finalize(st[i]);
    pthread_mutex_unlock(&s->sync_mu);
    return snap;
}
