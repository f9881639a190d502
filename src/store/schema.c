/* schema.c: the SQLite backend's ground floor: the schema the Go program wrote (created, or
 * migrated in place by ADD COLUMN only, so the Go program can still open the file), opening
 * the connections, the SQL and row helpers the other store files share, snapshot reads, and
 * store_open/store_close, which put the threading domains of store_internal.h together.
 *
 * Owns: the table definitions, the column list, connection settings (WAL, synchronous=NORMAL,
 * busy timeouts, no mmap, the guarded VFS of vfs.c, refusing a database SQLite could open
 * read-only), turning rows into store_* structs, the lifetime of store_t.
 * Must not: run on the event loop thread once the loop runs, or log a key, a token or a config
 * value (a SQLite error message may quote one, so none that could is logged). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"
#include "store_internal.h"

/* ---- schema ---- */

/* Byte for byte what GORM created, so sqlite_master reads the same as a Go-made file. */
static const char *const schema_sql[] = {
    "CREATE TABLE IF NOT EXISTS `openai_upstreams` (`id` integer,`created_at` datetime,"
    "`updated_at` datetime,`deleted_at` datetime,`sk` text,`endpoint` text,"
    "`success_count` integer,`failed_count` integer,`last_call_success_time` datetime,"
    "PRIMARY KEY (`id`))",
    "CREATE UNIQUE INDEX IF NOT EXISTS `idx_sk_endpoint` ON `openai_upstreams`(`sk`,`endpoint`)",
    "CREATE INDEX IF NOT EXISTS `idx_openai_upstreams_deleted_at` ON "
    "`openai_upstreams`(`deleted_at`)",
    "CREATE TABLE IF NOT EXISTS `config_kvs` (`id` integer,`created_at` datetime,"
    "`updated_at` datetime,`deleted_at` datetime,`key` text UNIQUE,`value` text,"
    "PRIMARY KEY (`id`))",
    "CREATE INDEX IF NOT EXISTS `idx_config_kvs_deleted_at` ON `config_kvs`(`deleted_at`)",
    "CREATE TABLE IF NOT EXISTS `records` (`id` uuid,`created_at` datetime,`ip` text,"
    "`body` text,`response` text,`elapsed_time` integer,PRIMARY KEY (`id`))",
};

/* Every column the code reads or writes. Older files (Go before elapsed_time, or before the
 * columns this program added) get the missing ones the way GORM's AutoMigrate adds them. */
static const struct {
    const char *table, *column, *type;
} columns[] = {
    {"openai_upstreams", "created_at", "datetime"},
    {"openai_upstreams", "updated_at", "datetime"},
    {"openai_upstreams", "deleted_at", "datetime"},
    {"openai_upstreams", "sk", "text"},
    {"openai_upstreams", "endpoint", "text"},
    {"openai_upstreams", "success_count", "integer"},
    {"openai_upstreams", "failed_count", "integer"},
    {"openai_upstreams", "last_call_success_time", "datetime"},
    {"config_kvs", "created_at", "datetime"},
    {"config_kvs", "updated_at", "datetime"},
    {"config_kvs", "deleted_at", "datetime"},
    {"config_kvs", "value", "text"},
    {"records", "created_at", "datetime"},
    {"records", "ip", "text"},
    {"records", "body", "text"},
    {"records", "response", "text"},
    {"records", "elapsed_time", "integer"},
    {"records", "model", "text"},
    {"records", "status", "integer"},
    {"records", "upstream_id", "integer"},
    {"records", "upstream_endpoint", "text"},
    {"records", "prompt_tokens", "integer"},
    {"records", "completion_tokens", "integer"},
    {"records", "total_tokens", "integer"},
    {"records", "response_time", "integer"},
    {"records", "user_agent", "text"},
    {"records", "error", "text"},
    {"records", "cached_tokens", "integer"},
    {"records", "reasoning_tokens", "integer"},
};

/* Newest-first listing sorts by the instant, not the text: rows written under different UTC
 * offsets (a DST change, a Go file from another zone) would misorder as strings. Each admin
 * filter has an index that also gives that order (rowid, the tie-break, ends every index), so
 * a filtered page reads only its rows, not the table: sync.c's WHERE fragments match these.
 * The status index holds the failures alone: nearly every row is a 200, which the time index
 * pages through as fast (a page of 200s is a page of that index, nearly), and every index a
 * row goes into is a B-tree descent per INSERT, about a tenth of the writer's time per row.
 * The Go program ignores indexes it does not know. */
static const struct {
    const char *name, *sql;
} records_indexes[] = {
    {"idx_records_created_at", "CREATE INDEX IF NOT EXISTS `idx_records_created_at` ON "
                               "`records`(julianday(`created_at`))"},
    {"idx_records_model", "CREATE INDEX IF NOT EXISTS `idx_records_model` ON "
                          "`records`(`model`,julianday(`created_at`))"},
    {"idx_records_failed", "CREATE INDEX IF NOT EXISTS `idx_records_failed` ON "
                           "`records`(`status`,julianday(`created_at`)) WHERE `status`<>200"},
    {"idx_records_upstream_id", "CREATE INDEX IF NOT EXISTS `idx_records_upstream_id` ON "
                                "`records`(`upstream_id`,julianday(`created_at`))"},
};

/* Indexes of records that earlier versions made and this one does not use: each costs every
 * INSERT a descent, so they go at the first start. */
static const char *const records_indexes_retired[] = {"idx_records_status"};

/* An older file with many rows pays for its missing indexes once, at the first start: the
 * time is logged so a slow start has its reason in the log. */
static int create_records_indexes(sqlite3 *db) {
    int missing = 0, ok = 1;
    for (size_t i = 0; i < STORE_COUNT(records_indexes); i++) {
        sqlite3_stmt *st =
            store_query(db, "SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", "s",
                        records_indexes[i].name);
        missing += st && sqlite3_step(st) == SQLITE_DONE;
        sqlite3_finalize(st);
    }
    for (size_t i = 0; ok && i < STORE_COUNT(records_indexes_retired); i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "DROP INDEX IF EXISTS `%s`", records_indexes_retired[i]);
        ok = store_exec(db, sql) == 0;
    }
    if (!missing) return ok ? 0 : -1;
    sqlite3_stmt *st = store_query(db, "SELECT 1 FROM `records` LIMIT 1", "");
    int has_rows = st && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    int64_t t0 = util_now_mono_ns();
    for (size_t i = 0; ok && i < STORE_COUNT(records_indexes); i++)
        ok = store_exec(db, records_indexes[i].sql) == 0;
    if (ok && has_rows)
        route_log(LOG_INFO, "store: built %d index(es) of records in %.1f s", missing,
                  (double)(util_now_mono_ns() - t0) / 1e9);
    return ok ? 0 : -1;
}

/* ---- small helpers ---- */

void store_set_err(char **err, sqlite3 *db) {
    if (err) *err = strdup(db ? sqlite3_errmsg(db) : "out of memory");
}

static int bindv(sqlite3_stmt *st, int first, const char *types, va_list ap) {
    int rc = SQLITE_OK;
    for (int i = first; *types && rc == SQLITE_OK; types++, i++) {
        switch (*types) {
        case 's':
            rc = sqlite3_bind_text(st, i, va_arg(ap, const char *), -1, SQLITE_STATIC);
            break;
        case 'S': {
            const char *p = va_arg(ap, const char *);
            size_t n = va_arg(ap, size_t);
            rc = sqlite3_bind_text64(st, i, p ? p : "", p ? n : 0, SQLITE_STATIC, SQLITE_UTF8);
            break;
        }
        case 'i':
            rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
            break;
        case 't': {
            char text[64];
            size_t n = util_format_db_time(text, sizeof text, va_arg(ap, int64_t));
            rc = sqlite3_bind_text(st, i, text, (int)n, SQLITE_TRANSIENT);
            break;
        }
        }
    }
    return rc;
}

int store_bind_at(sqlite3_stmt *st, int first, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    int rc = bindv(st, first, types, ap);
    va_end(ap);
    return rc;
}

static sqlite3_stmt *vquery(sqlite3 *db, const char *sql, const char *types, va_list ap) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return NULL;
    if (bindv(st, 1, types, ap) == SQLITE_OK) return st;
    sqlite3_finalize(st);
    return NULL;
}

sqlite3_stmt *store_query(sqlite3 *db, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = vquery(db, sql, types, ap);
    va_end(ap);
    return st;
}

int store_run(sqlite3 *db, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = vquery(db, sql, types, ap);
    va_end(ap);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    sqlite3_finalize(st);
    return rc;
}

int store_step_reset(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc;
}

int store_exec(sqlite3 *db, const char *sql) {
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out) {
    return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) == SQLITE_OK ? 0
                                                                                              : -1;
}

int64_t store_column_time(sqlite3_stmt *st, int col) {
    const char *text = (const char *)sqlite3_column_text(st, col);
    int64_t ns;
    return text && util_parse_db_time(text, &ns) == 0 && !util_time_is_never(ns) ? ns : 0;
}

/* NULL for SQL NULL and for "", as store_record_t documents. */
char *store_column_dup(sqlite3_stmt *st, int col, size_t *len) {
    const char *text = (const char *)sqlite3_column_text(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (len) *len = text ? n : 0;
    if (!text || n == 0) return NULL;
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, text, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- rows ---- */

int store_read_upstreams(sqlite3_stmt *st, store_upstream_list_t *out) {
    size_t cap = 0;
    int rc;
    out->items = NULL;
    out->n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == cap) {
            cap = cap ? cap * 2 : 8;
            store_upstream_t *items = realloc(out->items, cap * sizeof *items);
            if (!items) break;
            out->items = items;
        }
        store_upstream_t *u = &out->items[out->n++];
        u->id = sqlite3_column_int64(st, 0);
        u->created_at = store_column_time(st, 1);
        u->updated_at = store_column_time(st, 2);
        u->sk = strdup((const char *)sqlite3_column_text(st, 3) ?: "");
        u->endpoint = strdup((const char *)sqlite3_column_text(st, 4) ?: "");
        u->success_count = sqlite3_column_int64(st, 5);
        u->failed_count = sqlite3_column_int64(st, 6);
        u->last_call_success_time = store_column_time(st, 7);
        u->has_last_success = u->last_call_success_time != 0;
        if (!u->sk || !u->endpoint) break;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return 0;
    store_upstream_list_free(out);
    return -1;
}

void store_kv_list_free(kv_list_t *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int store_kv_set(kv_list_t *l, const char *key, const char *value) {
    char *v = strdup(value);
    if (!v) return -1;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0) {
            free(l->items[i].value);
            l->items[i].value = v;
            return 0;
        }
    kv_t *items = realloc(l->items, (l->n + 1) * sizeof *items);
    char *k = strdup(key);
    if (items) l->items = items;
    if (!items || !k) {
        free(k);
        free(v);
        return -1;
    }
    l->items[l->n++] = (kv_t){k, v};
    return 0;
}

int store_read_config(sqlite3_stmt *st, kv_list_t *out) {
    int rc;
    out->items = NULL;
    out->n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const char *value = (const char *)sqlite3_column_text(st, 1);
        if (key && store_kv_set(out, key, value ? value : "")) break;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return 0;
    store_kv_list_free(out);
    return -1;
}

/* ---- bump tables (a handful of upstreams: a linear scan beats a hash) ---- */

bump_t *store_bump_find(bump_table_t *t, int64_t upstream_id) {
    for (size_t i = 0; i < t->n; i++)
        if (t->items[i].upstream_id == upstream_id) return &t->items[i];
    return NULL;
}

bump_t *store_bump_get(bump_table_t *t, int64_t upstream_id) {
    bump_t *b = store_bump_find(t, upstream_id);
    if (b) return b;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        bump_t *items = realloc(t->items, cap * sizeof *items);
        if (!items) return NULL;
        t->items = items;
        t->cap = cap;
    }
    b = &t->items[t->n++];
    *b = (bump_t){.upstream_id = upstream_id};
    return b;
}

int store_bump_copy(bump_table_t *dst, const bump_table_t *src) {
    *dst = (bump_table_t){0};
    if (!src->n) return 0;
    if (!(dst->items = malloc(src->n * sizeof *dst->items))) return -1;
    memcpy(dst->items, src->items, src->n * sizeof *dst->items);
    dst->n = dst->cap = src->n;
    return 0;
}

void store_bump_free(bump_table_t *t) {
    free(t->items);
    *t = (bump_table_t){0};
}

/* ---- snapshots ---- */

void store_snapshot_free(store_snapshot_t *snap) {
    if (!snap) return;
    store_kv_list_free(&snap->config);
    store_upstream_list_free(&snap->upstreams);
    store_bump_free(&snap->committed);
    free(snap);
}

store_snapshot_t *store_snapshot_read_on(store_t *s, sqlite3_stmt *begin, sqlite3_stmt *end,
                                         sqlite3_stmt *sel_config, sqlite3_stmt *sel_upstreams) {
    store_snapshot_t *snap = calloc(1, sizeof *snap);
    if (!snap) return NULL;
    int ok = 0;
    /* Under snap_mu the writer cannot commit: the rows read and the committed figures copied
     * describe the same instant. One read transaction makes config and upstreams agree. */
    pthread_mutex_lock(&s->snap_mu);
    if (store_step_reset(begin) == SQLITE_DONE) {
        ok = store_read_config(sel_config, &snap->config) == 0;
        if (ok && store_read_upstreams(sel_upstreams, &snap->upstreams)) {
            store_kv_list_free(&snap->config);
            ok = 0;
        }
        store_step_reset(end);
    }
    if (ok) ok = store_bump_copy(&snap->committed, &s->committed) == 0;
    snap->config_seq = s->config_seq_written;
    snap->epoch = ++s->snapshot_epoch;
    pthread_mutex_unlock(&s->snap_mu);
    if (ok) return snap;
    store_snapshot_free(snap);
    return NULL;
}

/* ---- connections ---- */

sqlite3 *store_db_open(const char *path, int busy_ms, char **err) {
    sqlite3 *db;
    /* NOMUTEX: each connection is used by one thread at a time (sync_mu, or the writer thread
     * alone), so SQLite's own per-call mutex is pure cost. */
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        store_vfs()) != SQLITE_OK) {
        store_set_err(err, db);
        sqlite3_close(db);
        return NULL;
    }
    /* SQLite falls back to read-only when the file cannot be opened for writing (permissions,
     * an immutable file, a read-only mount): every record would then fail, so it is refused. */
    if (sqlite3_db_readonly(db, "main") == 1) {
        if (err)
            *err = strdup("the database is read-only (file permissions, an immutable attribute "
                          "or a read-only mount): the proxy needs to write it");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, busy_ms);
    /* With WAL, NORMAL loses nothing on a process crash and skips an fsync per commit. */
    store_exec(db, "PRAGMA synchronous=NORMAL");
    /* No memory-mapped database pages: a file that cannot be written or is truncated under a
     * mapping raises SIGBUS, where read() and write() return an error. */
    store_exec(db, "PRAGMA mmap_size=0");
    return db;
}

int store_create_schema(sqlite3 *db, char **err) {
    /* Only a new, empty file takes it (an existing one keeps its own): 16 KiB pages write a
     * record row for ~30% less than 4 KiB ones (fewer WAL frames, splits and checkpoint
     * pages per row). Any page size opens in the Go program's SQLite alike. */
    store_exec(db, "PRAGMA page_size=16384");
    if (store_exec(db, "PRAGMA journal_mode=WAL") || store_exec(db, "BEGIN IMMEDIATE")) {
        store_set_err(err, db);
        return -1;
    }
    int ok = 1;
    for (size_t i = 0; ok && i < STORE_COUNT(schema_sql); i++)
        ok = store_exec(db, schema_sql[i]) == 0;
    for (size_t i = 0; ok && i < STORE_COUNT(columns); i++) {
        sqlite3_stmt *st = store_query(db, "SELECT 1 FROM pragma_table_info(?) WHERE name=?", "ss",
                                       columns[i].table, columns[i].column);
        int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
        sqlite3_finalize(st);
        if (rc == SQLITE_DONE) {
            char sql[200];
            snprintf(sql, sizeof sql, "ALTER TABLE `%s` ADD `%s` %s", columns[i].table,
                     columns[i].column, columns[i].type);
            ok = store_exec(db, sql) == 0;
        } else {
            ok = rc == SQLITE_ROW;
        }
    }
    if (ok) ok = create_records_indexes(db) == 0 && store_exec(db, "COMMIT") == 0;
    if (ok) return 0;
    store_set_err(err, db); /* before the rollback replaces the message */
    store_exec(db, "ROLLBACK");
    return -1;
}

/* ---- store_t ---- */

static void store_free(store_t *s) {
    store_writer_free(s);
    sqlite3_close(s->sync_db);
    store_cache_free(s);
    store_bump_free(&s->committed);
    store_snapshot_free(s->inbox);
    pthread_mutex_destroy(&s->sync_mu);
    pthread_mutex_destroy(&s->snap_mu);
    pthread_mutex_destroy(&s->inbox_mu);
    pthread_mutex_destroy(&s->queue_mu);
    pthread_cond_destroy(&s->queue_cond);
    free(s);
}

static store_t *store_alloc(char **err) {
    if (err) *err = NULL;
    store_t *s = calloc(1, sizeof *s);
    if (!s) {
        store_set_err(err, NULL);
        return NULL;
    }
    pthread_mutex_init(&s->sync_mu, NULL);
    pthread_mutex_init(&s->snap_mu, NULL);
    pthread_mutex_init(&s->inbox_mu, NULL);
    pthread_mutex_init(&s->queue_mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->queue_cond, &attr);
    pthread_condattr_destroy(&attr);
    s->queue_config_tail = &s->queue_config;
    s->queue_max = 100000;
    s->queue_bytes_max = (size_t)64 << 20;
    return s;
}

store_t *store_open(const char *path, char **err) {
    store_t *s = store_alloc(err);
    if (!s) return NULL;
    if (!(s->sync_db = store_db_open(path, STORE_BUSY_TIMEOUT_MS, err))) goto fail;
    if (store_create_schema(s->sync_db, err)) goto fail;
    if (store_writer_prepare(s, path, err)) goto fail;
    /* The first snapshot, so the loop has a view before anything else runs. */
    store_snapshot_t *first = store_snapshot_read(s);
    if (!first) {
        store_set_err(err, s->sync_db);
        goto fail;
    }
    store_loop_apply(s, first);
    if (store_writer_start(s)) {
        store_set_err(err, NULL);
        goto fail;
    }
    return s;
fail:
    store_free(s);
    return NULL;
}

/* file: URI of path with immutable=1, or NULL when out of memory. */
static char *immutable_uri(const char *path) {
    buf_t b = {0};
    int rc = buf_appends(&b, "file:");
    for (const unsigned char *p = (const unsigned char *)path; *p && rc == 0; p++)
        rc = *p == '%' || *p == '?' || *p == '#' || *p < 0x21 || *p >= 0x7f
                 ? buf_printf(&b, "%%%02X", *p)
                 : buf_append(&b, (const char *)p, 1);
    if (rc == 0) rc = buf_appends(&b, "?immutable=1");
    if (rc == 0 && buf_append(&b, "", 1) == 0) return b.data;
    buf_free(&b);
    return NULL;
}

static store_snapshot_t *open_and_read(store_t *s, const char *name, int flags) {
    if (sqlite3_open_v2(name, &s->sync_db, flags, NULL) != SQLITE_OK) return NULL;
    sqlite3_busy_timeout(s->sync_db, STORE_BUSY_TIMEOUT_MS);
    return store_snapshot_read(s);
}

store_t *store_open_readonly(const char *path, char **err) {
    store_t *s = store_alloc(err);
    if (!s) return NULL;
    /* No writer: its statements, thread and queue stay empty, so store_close only closes. */
    store_snapshot_t *first = open_and_read(s, path, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX);
    int code = s->sync_db ? sqlite3_extended_errcode(s->sync_db) : SQLITE_NOMEM;
    if (!first && ((code & 0xff) == SQLITE_READONLY || (code & 0xff) == SQLITE_CANTOPEN)) {
        /* A WAL database read by a user who may not create its -wal/-shm (an operator
         * checking the service's file): read it as immutable. That skips the WAL and its
         * locks, which is right for a check: it sees the last checkpointed state. */
        char *uri = immutable_uri(path);
        if (uri) {
            sqlite3_close(s->sync_db);
            s->sync_db = NULL;
            first =
                open_and_read(s, uri, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI);
            free(uri);
        }
    }
    if (!first) {
        store_set_err(err, s->sync_db);
        store_free(s);
        return NULL;
    }
    store_loop_apply(s, first);
    return s;
}

void store_close(store_t *s) {
    if (!s) return;
    /* The loop may be gone already: only stop handing snapshots over (the async handle is the
     * loop's to close, through store_detach_loop). */
    pthread_mutex_lock(&s->inbox_mu);
    s->attached = 0;
    pthread_mutex_unlock(&s->inbox_mu);
    store_writer_stop(s);
    store_free(s);
}

/* ---- owned structures ---- */

void store_upstream_list_free(store_upstream_list_t *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].sk);
        free(l->items[i].endpoint);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* Defaults the caller would otherwise have to fill in for every row: a fresh id and now. */
store_record_t *store_record_new(void) {
    int64_t now = util_now_wall_ns();
    char id[37];
    /* v7: rows reach the primary key's index in order, an append at its right edge instead of
     * an insert at a random leaf, which halves the cost of a row at high rates
     * (tests/bench/bench_store.c). */
    util_uuid7(id, now);
    return store_record_new_id(id, now);
}

store_record_t *store_record_new_inline(const char *id, int64_t created_at, size_t inline_len) {
    if (inline_len > SIZE_MAX / 2) return NULL;
    store_record_t *r = malloc(sizeof *r + inline_len);
    if (!r) return NULL;
    memset(r, 0, sizeof *r);
    size_t n = id ? strnlen(id, sizeof r->id - 1) : 0;
    memcpy(r->id, id ? id : "", n);
    r->id[n] = '\0';
    r->created_at = created_at;
    r->inline_len = inline_len;
    r->cached_tokens = r->reasoning_tokens = -1;
    return r;
}

store_record_t *store_record_new_id(const char *id, int64_t created_at) {
    return store_record_new_inline(id, created_at, 0);
}

static int is_inline(const store_record_t *r, const char *p) {
    uintptr_t start = (uintptr_t)(r + 1), at = (uintptr_t)p;
    return p && at >= start && at < start + r->inline_len;
}

int store_record_set_string(store_record_t *r, char **field, const char *s, size_t n) {
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    if (n) memcpy(copy, s, n);
    copy[n] = '\0';
    if (*field && !is_inline(r, *field)) free(*field);
    *field = copy;
    return 0;
}

void store_record_free(store_record_t *r) {
    if (!r) return;
    char *strings[] = {r->ip,         r->body, r->response, r->model, r->upstream_endpoint,
                       r->user_agent, r->error};
    for (size_t i = 0; i < STORE_COUNT(strings); i++)
        if (!is_inline(r, strings[i])) free(strings[i]);
    free(r);
}
