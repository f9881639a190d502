/* store.c: the SQLite database the Go program wrote: its schema (created or migrated in place
 * by ADD COLUMN only, so the Go program can still open the file), the synchronous calls for
 * the CLI and the admin API, the event loop's cached view, and the writer thread that batches
 * the loop's writes. The loop-thread calls must never wait on a write, and nothing here may
 * log a key, a token or a config value.
 *
 * Three connections, one per kind of caller, so none waits on another's lock:
 *   sync_db   start-up, CLI and admin work threads, serialized by sync_mu;
 *   loop_db   the event loop's reads (busy timeout 0: a busy read is retried next refresh);
 *   writer_db owned by the writer thread. */
#include "route/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"

#define BUSY_TIMEOUT_MS 5000
#define WRITE_ATTEMPTS  3
#define COUNT(a)        (sizeof(a) / sizeof *(a))

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
};

/* Newest-first listing sorts by the instant, not the text: rows written under different UTC
 * offsets (a DST change, a Go file from another zone) would misorder as strings. */
static const char records_index_sql[] = "CREATE INDEX IF NOT EXISTS `idx_records_created_at` ON "
                                        "`records`(julianday(`created_at`))";

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
    "`user_agent`,`error`"

/* ---- types ---- */

typedef struct kv {
    char *key, *value;
} kv_t;

typedef struct kv_list {
    kv_t *items;
    size_t n;
} kv_list_t;

enum item_kind { ITEM_RECORD, ITEM_SUCCESS, ITEM_FAILURE, ITEM_CONFIG };

typedef struct item {
    struct item *next;
    enum item_kind kind;
    store_record_t *record;
    int64_t upstream_id, at;
    char *key, *value;
    uint64_t config_seq;
} item_t;

struct store {
    sqlite3 *sync_db;
    pthread_mutex_t sync_mu;

    /* Loop thread only. */
    sqlite3 *loop_db;
    sqlite3_stmt *loop_version, *loop_config, *loop_upstreams;
    int64_t data_version;
    int cache_valid;
    uint64_t config_generation, upstreams_generation;
    kv_list_t config;
    store_upstream_list_t upstreams;
    /* Config values the loop set that the writer may not have committed yet: re-applied over
     * every re-read of config_kvs until it has, so the cache never flips back to the old value. */
    item_t *pending;
    uint64_t config_seq;

    /* Writer thread only. */
    sqlite3 *writer_db;
    sqlite3_stmt *w_record, *w_success, *w_failure, *w_config;

    /* Shared between the loop and the writer, under queue_mu. */
    pthread_mutex_t queue_mu;
    pthread_cond_t queue_cond;
    item_t *queue, **queue_tail;
    int stopping;
    uint64_t config_seq_written;
    pthread_t writer;
};

/* ---- small helpers ---- */

static void set_err(char **err, sqlite3 *db) {
    if (err) *err = strdup(db ? sqlite3_errmsg(db) : "out of memory");
}

/* Binds args by type letters: s text (NULL binds NULL), S text with a size_t length,
 * i int64, t wall ns as the Go database text. */
static int bindv(sqlite3_stmt *st, const char *types, va_list ap) {
    int rc = SQLITE_OK;
    for (int i = 1; *types && rc == SQLITE_OK; types++, i++) {
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

static int bind(sqlite3_stmt *st, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    int rc = bindv(st, types, ap);
    va_end(ap);
    return rc;
}

static sqlite3_stmt *vquery(sqlite3 *db, const char *sql, const char *types, va_list ap) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return NULL;
    if (bindv(st, types, ap) == SQLITE_OK) return st;
    sqlite3_finalize(st);
    return NULL;
}

static sqlite3_stmt *query(sqlite3 *db, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = vquery(db, sql, types, ap);
    va_end(ap);
    return st;
}

/* Runs a statement to completion; returns the SQLite result code (SQLITE_DONE on success). */
static int run(sqlite3 *db, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = vquery(db, sql, types, ap);
    va_end(ap);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    sqlite3_finalize(st);
    return rc;
}

static int step_done(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc;
}

static int exec(sqlite3 *db, const char *sql) {
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int64_t column_time(sqlite3_stmt *st, int col) {
    const char *text = (const char *)sqlite3_column_text(st, col);
    int64_t ns;
    return text && util_parse_db_time(text, &ns) == 0 && !util_time_is_never(ns) ? ns : 0;
}

/* NULL for SQL NULL and for "", as store_record_t documents. */
static char *column_dup(sqlite3_stmt *st, int col, size_t *len) {
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

/* ---- reading ---- */

static int read_upstreams(sqlite3_stmt *st, store_upstream_list_t *out) {
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
        u->created_at = column_time(st, 1);
        u->updated_at = column_time(st, 2);
        u->sk = strdup((const char *)sqlite3_column_text(st, 3) ?: "");
        u->endpoint = strdup((const char *)sqlite3_column_text(st, 4) ?: "");
        u->success_count = sqlite3_column_int64(st, 5);
        u->failed_count = sqlite3_column_int64(st, 6);
        u->last_call_success_time = column_time(st, 7);
        u->has_last_success = u->last_call_success_time != 0;
        if (!u->sk || !u->endpoint) break;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return 0;
    store_upstream_list_free(out);
    return -1;
}

static void kv_list_free(kv_list_t *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static int kv_set(kv_list_t *l, const char *key, const char *value) {
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

static int read_config(sqlite3_stmt *st, kv_list_t *out) {
    int rc;
    out->items = NULL;
    out->n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const char *value = (const char *)sqlite3_column_text(st, 1);
        if (key && kv_set(out, key, value ? value : "")) break;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return 0;
    kv_list_free(out);
    return -1;
}

/* ---- open / close ---- */

static sqlite3 *db_open(const char *path, int busy_ms, char **err) {
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        set_err(err, db);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, busy_ms);
    /* With WAL, NORMAL loses nothing on a process crash and skips an fsync per commit. */
    exec(db, "PRAGMA synchronous=NORMAL");
    return db;
}

static int create_schema(sqlite3 *db, char **err) {
    if (exec(db, "PRAGMA journal_mode=WAL") || exec(db, "BEGIN IMMEDIATE")) {
        set_err(err, db);
        return -1;
    }
    int ok = 1;
    for (size_t i = 0; ok && i < COUNT(schema_sql); i++)
        ok = exec(db, schema_sql[i]) == 0;
    for (size_t i = 0; ok && i < COUNT(columns); i++) {
        sqlite3_stmt *st = query(db, "SELECT 1 FROM pragma_table_info(?) WHERE name=?", "ss",
                                 columns[i].table, columns[i].column);
        int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
        sqlite3_finalize(st);
        if (rc == SQLITE_DONE) {
            char sql[200];
            snprintf(sql, sizeof sql, "ALTER TABLE `%s` ADD `%s` %s", columns[i].table,
                     columns[i].column, columns[i].type);
            ok = exec(db, sql) == 0;
        } else {
            ok = rc == SQLITE_ROW;
        }
    }
    if (ok) ok = exec(db, records_index_sql) == 0 && exec(db, "COMMIT") == 0;
    if (ok) return 0;
    set_err(err, db); /* before the rollback replaces the message */
    exec(db, "ROLLBACK");
    return -1;
}

static int prepare_all(sqlite3 *db, const char *const *sql, sqlite3_stmt **const *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, out[i], NULL) !=
            SQLITE_OK)
            return -1;
    return 0;
}

static void *writer_main(void *arg);

static void item_free(item_t *it) {
    if (!it) return;
    store_record_free(it->record);
    free(it->key);
    free(it->value);
    free(it);
}

static void store_free(store_t *s) {
    sqlite3_stmt *stmts[] = {s->loop_version, s->loop_config, s->loop_upstreams, s->w_record,
                             s->w_success,    s->w_failure,   s->w_config};
    for (size_t i = 0; i < COUNT(stmts); i++)
        sqlite3_finalize(stmts[i]);
    sqlite3_close(s->loop_db);
    sqlite3_close(s->writer_db);
    sqlite3_close(s->sync_db);
    kv_list_free(&s->config);
    store_upstream_list_free(&s->upstreams);
    while (s->pending) {
        item_t *p = s->pending;
        s->pending = p->next;
        item_free(p);
    }
    pthread_mutex_destroy(&s->sync_mu);
    pthread_mutex_destroy(&s->queue_mu);
    pthread_cond_destroy(&s->queue_cond);
    free(s);
}

store_t *store_open(const char *path, char **err) {
    if (err) *err = NULL;
    store_t *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, NULL);
        return NULL;
    }
    pthread_mutex_init(&s->sync_mu, NULL);
    pthread_mutex_init(&s->queue_mu, NULL);
    pthread_cond_init(&s->queue_cond, NULL);
    s->queue_tail = &s->queue;

    static const char *const loop_sql[] = {"PRAGMA data_version", CONFIG_SELECT, UPSTREAM_SELECT};
    sqlite3_stmt **const loop_out[] = {&s->loop_version, &s->loop_config, &s->loop_upstreams};
    static const char *const writer_sql[] = {
        "INSERT INTO `records` (" RECORD_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        "UPDATE `openai_upstreams` SET `success_count`=COALESCE(`success_count`,0)+1,"
        "`last_call_success_time`=?1,`updated_at`=?1 WHERE `id`=?2",
        "UPDATE `openai_upstreams` SET `failed_count`=COALESCE(`failed_count`,0)+1,"
        "`updated_at`=?1 WHERE `id`=?2",
        CONFIG_UPSERT};
    sqlite3_stmt **const writer_out[] = {&s->w_record, &s->w_success, &s->w_failure, &s->w_config};

    if (!(s->sync_db = db_open(path, BUSY_TIMEOUT_MS, err))) goto fail;
    if (create_schema(s->sync_db, err)) goto fail;
    if (!(s->loop_db = db_open(path, 0, err))) goto fail;
    if (prepare_all(s->loop_db, loop_sql, loop_out, COUNT(loop_out))) {
        set_err(err, s->loop_db);
        goto fail;
    }
    if (!(s->writer_db = db_open(path, BUSY_TIMEOUT_MS, err))) goto fail;
    if (prepare_all(s->writer_db, writer_sql, writer_out, COUNT(writer_out))) {
        set_err(err, s->writer_db);
        goto fail;
    }
    if (pthread_create(&s->writer, NULL, writer_main, s)) {
        set_err(err, NULL);
        goto fail;
    }
    store_loop_refresh(s);
    return s;
fail:
    store_free(s);
    return NULL;
}

void store_close(store_t *s) {
    if (!s) return;
    pthread_mutex_lock(&s->queue_mu);
    s->stopping = 1;
    pthread_cond_signal(&s->queue_cond);
    pthread_mutex_unlock(&s->queue_mu);
    pthread_join(s->writer, NULL);
    store_free(s);
}

/* ---- writer thread ---- */

static size_t text_len(const char *s, size_t len) {
    return len ? len : s ? strlen(s) : 0;
}

static int write_item(store_t *s, const item_t *it) {
    sqlite3_stmt *st;
    int rc;
    switch (it->kind) {
    case ITEM_RECORD: {
        const store_record_t *r = it->record;
        st = s->w_record;
        /* Empty strings, not NULL, as the Go program wrote them. */
        rc = bind(st, "stsSSisiisiiiiss", r->id, r->created_at, r->ip ?: "", r->body,
                  text_len(r->body, r->body_len), r->response,
                  text_len(r->response, r->response_len), r->elapsed_ns, r->model ?: "",
                  (int64_t)r->status, r->upstream_id, r->upstream_endpoint ?: "", r->prompt_tokens,
                  r->completion_tokens, r->total_tokens, r->response_time_ns, r->user_agent ?: "",
                  r->error ?: "");
        break;
    }
    case ITEM_SUCCESS:
    case ITEM_FAILURE:
        st = it->kind == ITEM_SUCCESS ? s->w_success : s->w_failure;
        rc = bind(st, "ti", it->at, it->upstream_id);
        break;
    default:
        st = s->w_config;
        rc = bind(st, "ttss", it->at, it->at, it->key, it->value);
    }
    if (rc == SQLITE_OK) rc = step_done(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* One transaction for the whole batch: an fsync-free commit per batch instead of per row. */
static int write_batch(store_t *s, const item_t *batch) {
    sqlite3 *db = s->writer_db;
    if (exec(db, "BEGIN IMMEDIATE") == 0) {
        for (const item_t *it = batch; it; it = it->next)
            if (write_item(s, it))
                route_log(LOG_ERROR, "store: a queued write failed: %s", sqlite3_errmsg(db));
        if (exec(db, "COMMIT") == 0) return 0;
    }
    route_log(LOG_WARN, "store: writing a batch failed: %s", sqlite3_errmsg(db));
    exec(db, "ROLLBACK");
    return -1;
}

static void *writer_main(void *arg) {
    store_t *s = arg;
    pthread_mutex_lock(&s->queue_mu);
    for (;;) {
        while (!s->queue && !s->stopping)
            pthread_cond_wait(&s->queue_cond, &s->queue_mu);
        item_t *batch = s->queue;
        if (!batch) break;
        s->queue = NULL;
        s->queue_tail = &s->queue;
        pthread_mutex_unlock(&s->queue_mu);

        int rc = -1;
        for (int attempt = 0; rc && attempt < WRITE_ATTEMPTS; attempt++)
            rc = write_batch(s, batch);
        size_t n = 0;
        uint64_t seq = 0;
        for (item_t *next; batch; batch = next, n++) {
            next = batch->next;
            if (batch->config_seq > seq) seq = batch->config_seq;
            item_free(batch);
        }
        if (rc) route_log(LOG_ERROR, "store: %zu queued writes lost", n);

        pthread_mutex_lock(&s->queue_mu);
        /* Even a lost config write is "done": the cache should then show what the file has. */
        if (seq > s->config_seq_written) s->config_seq_written = seq;
    }
    pthread_mutex_unlock(&s->queue_mu);
    return NULL;
}

static void enqueue(store_t *s, item_t *it) {
    it->next = NULL;
    pthread_mutex_lock(&s->queue_mu);
    *s->queue_tail = it;
    s->queue_tail = &it->next;
    pthread_cond_signal(&s->queue_cond);
    pthread_mutex_unlock(&s->queue_mu);
}

/* ---- event loop thread ---- */

void store_loop_refresh(store_t *s) {
    if (sqlite3_step(s->loop_version) != SQLITE_ROW) {
        sqlite3_reset(s->loop_version);
        return;
    }
    int64_t version = sqlite3_column_int64(s->loop_version, 0);
    sqlite3_reset(s->loop_version);
    if (s->cache_valid && version == s->data_version) return;

    /* Read before the tables: a write counted here as committed is surely in what follows. */
    pthread_mutex_lock(&s->queue_mu);
    uint64_t written = s->config_seq_written;
    pthread_mutex_unlock(&s->queue_mu);
    kv_list_t config;
    store_upstream_list_t upstreams;
    if (read_config(s->loop_config, &config)) return;
    if (read_upstreams(s->loop_upstreams, &upstreams)) {
        kv_list_free(&config);
        return;
    }
    kv_list_free(&s->config);
    store_upstream_list_free(&s->upstreams);
    s->config = config;
    s->upstreams = upstreams;
    s->data_version = version;
    s->cache_valid = 1;
    s->config_generation++;
    s->upstreams_generation++;
    for (item_t **pp = &s->pending, *p; (p = *pp);) {
        if (p->config_seq <= written) {
            *pp = p->next;
            item_free(p);
        } else {
            kv_set(&s->config, p->key, p->value);
            pp = &p->next;
        }
    }
}

const char *store_loop_config(store_t *s, const char *key) {
    for (size_t i = 0; i < s->config.n; i++)
        if (strcmp(s->config.items[i].key, key) == 0) return s->config.items[i].value;
    return NULL;
}

uint64_t store_loop_config_generation(const store_t *s) {
    return s->config_generation;
}

uint64_t store_loop_upstreams_generation(const store_t *s) {
    return s->upstreams_generation;
}

const store_upstream_list_t *store_loop_upstreams(store_t *s) {
    return &s->upstreams;
}

static item_t *config_item(const char *key, const char *value, uint64_t seq) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) return NULL;
    it->kind = ITEM_CONFIG;
    it->at = util_now_wall_ns();
    it->config_seq = seq;
    it->key = strdup(key);
    it->value = strdup(value);
    if (it->key && it->value) return it;
    item_free(it);
    return NULL;
}

void store_loop_config_set(store_t *s, const char *key, const char *value) {
    uint64_t seq = ++s->config_seq;
    item_t *it = config_item(key, value, seq), *p = config_item(key, value, seq);
    if (!it || !p || kv_set(&s->config, key, value)) {
        route_log(LOG_ERROR, "store: out of memory, config key %s not set", key);
        item_free(it);
        item_free(p);
        return;
    }
    /* At most one pending value per key, the newest, so the order of re-applying is moot. */
    for (item_t **pp = &s->pending, *old; (old = *pp);) {
        if (strcmp(old->key, key) == 0) {
            *pp = old->next;
            item_free(old);
        } else {
            pp = &old->next;
        }
    }
    p->next = s->pending;
    s->pending = p;
    s->config_generation++;
    enqueue(s, it);
}

void store_loop_record(store_t *s, store_record_t *r) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) {
        route_log(LOG_ERROR, "store: out of memory, record %s dropped", r->id);
        store_record_free(r);
        return;
    }
    it->kind = ITEM_RECORD;
    it->record = r;
    enqueue(s, it);
}

void store_loop_upstream_result(store_t *s, int64_t upstream_id, int success) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) {
        route_log(LOG_ERROR, "store: out of memory, counter of upstream %lld not updated",
                  (long long)upstream_id);
        return;
    }
    it->kind = success ? ITEM_SUCCESS : ITEM_FAILURE;
    it->upstream_id = upstream_id;
    it->at = util_now_wall_ns();
    /* The next pick must see this result now, not after the writer's commit: round_robin
     * would otherwise send back-to-back requests to the same upstream. */
    for (size_t i = 0; i < s->upstreams.n; i++) {
        store_upstream_t *u = &s->upstreams.items[i];
        if (u->id != upstream_id) continue;
        if (success) {
            u->success_count++;
            u->last_call_success_time = it->at;
            u->has_last_success = 1;
        } else {
            u->failed_count++;
        }
    }
    enqueue(s, it);
}

/* ---- synchronous calls ---- */

int store_add_upstream(store_t *s, const char *sk, const char *endpoint, int64_t *id) {
    int ret = STORE_ERROR;
    int64_t now = util_now_wall_ns();
    pthread_mutex_lock(&s->sync_mu);
    sqlite3 *db = s->sync_db;
    if (exec(db, "BEGIN IMMEDIATE")) goto out;
    sqlite3_stmt *st = query(db,
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
        if (run(db,
                "UPDATE `openai_upstreams` SET `created_at`=?1,`updated_at`=?1,`deleted_at`=NULL,"
                "`success_count`=0,`failed_count`=0,`last_call_success_time`=NULL WHERE `id`=?2",
                "ti", now, found) == SQLITE_DONE) {
            *id = found;
            ret = STORE_OK;
        }
    } else if (rc == SQLITE_DONE &&
               run(db,
                   "INSERT INTO `openai_upstreams` (`created_at`,`updated_at`,`sk`,`endpoint`,"
                   "`success_count`,`failed_count`) VALUES (?1,?1,?2,?3,0,0)",
                   "tss", now, sk, endpoint) == SQLITE_DONE) {
        *id = sqlite3_last_insert_rowid(db);
        ret = STORE_OK;
    }
    exec(db, ret == STORE_ERROR ? "ROLLBACK" : "COMMIT");
out:
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_update_upstream(store_t *s, int64_t id, const char *sk, const char *endpoint) {
    int ret = STORE_ERROR;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3 *db = s->sync_db;
    if (exec(db, "BEGIN IMMEDIATE")) goto out;
    /* A soft-deleted row still holds its (sk, endpoint) in the unique index; being invisible,
     * it must not block the pair, so it goes for good. */
    int rc = run(db,
                 "DELETE FROM `openai_upstreams` WHERE `deleted_at` IS NOT NULL AND "
                 "(`sk`,`endpoint`)=(SELECT COALESCE(?1,`sk`),COALESCE(?2,`endpoint`) "
                 "FROM `openai_upstreams` WHERE `id`=?3 AND `deleted_at` IS NULL)",
                 "ssi", sk, endpoint, id);
    if (rc == SQLITE_DONE)
        rc = run(db,
                 "UPDATE `openai_upstreams` SET `sk`=COALESCE(?1,`sk`),"
                 "`endpoint`=COALESCE(?2,`endpoint`),`updated_at`=?3 "
                 "WHERE `id`=?4 AND `deleted_at` IS NULL",
                 "ssti", sk, endpoint, util_now_wall_ns(), id);
    if (rc == SQLITE_DONE)
        ret = sqlite3_changes(db) ? STORE_OK : STORE_NOT_FOUND;
    else if (rc == SQLITE_CONSTRAINT)
        ret = STORE_EXISTS;
    exec(db, ret == STORE_OK ? "COMMIT" : "ROLLBACK");
out:
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_delete_upstream(store_t *s, int64_t id) {
    pthread_mutex_lock(&s->sync_mu);
    int rc =
        run(s->sync_db,
            "UPDATE `openai_upstreams` SET `deleted_at`=? WHERE `id`=? AND `deleted_at` IS NULL",
            "ti", util_now_wall_ns(), id);
    int ret = rc != SQLITE_DONE             ? STORE_ERROR
              : sqlite3_changes(s->sync_db) ? STORE_OK
                                            : STORE_NOT_FOUND;
    pthread_mutex_unlock(&s->sync_mu);
    return ret;
}

int store_list_upstreams(store_t *s, store_upstream_list_t *out) {
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = query(s->sync_db, UPSTREAM_SELECT, "");
    int rc = st ? read_upstreams(st, out) : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    return rc ? STORE_ERROR : STORE_OK;
}

char *store_config_get(store_t *s, const char *key) {
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st =
        query(s->sync_db, "SELECT `value` FROM `config_kvs` WHERE `key`=? AND `deleted_at` IS NULL",
              "s", key);
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
    int rc = run(s->sync_db, CONFIG_UPSERT, "ttss", now, now, key, value);
    pthread_mutex_unlock(&s->sync_mu);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERROR;
}

int store_config_each(store_t *s, void (*fn)(void *ud, const char *key, const char *value),
                      void *ud) {
    kv_list_t l;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = query(s->sync_db, CONFIG_SELECT, "");
    int rc = st ? read_config(st, &l) : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->sync_mu);
    if (rc) return STORE_ERROR;
    /* Called outside the lock, so fn may use the store. */
    for (size_t i = 0; i < l.n; i++)
        fn(ud, l.items[i].key, l.items[i].value);
    kv_list_free(&l);
    return STORE_OK;
}

static store_record_t *read_record(sqlite3_stmt *st) {
    store_record_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    const char *id = (const char *)sqlite3_column_text(st, 0);
    snprintf(r->id, sizeof r->id, "%s", id ? id : "");
    r->created_at = column_time(st, 1);
    r->ip = column_dup(st, 2, NULL);
    r->body = column_dup(st, 3, &r->body_len);
    r->response = column_dup(st, 4, &r->response_len);
    r->elapsed_ns = sqlite3_column_int64(st, 5);
    r->model = column_dup(st, 6, NULL);
    r->status = sqlite3_column_int(st, 7);
    r->upstream_id = sqlite3_column_int64(st, 8);
    r->upstream_endpoint = column_dup(st, 9, NULL);
    r->prompt_tokens = sqlite3_column_int64(st, 10);
    r->completion_tokens = sqlite3_column_int64(st, 11);
    r->total_tokens = sqlite3_column_int64(st, 12);
    r->response_time_ns = sqlite3_column_int64(st, 13);
    r->user_agent = column_dup(st, 14, NULL);
    r->error = column_dup(st, 15, NULL);
    return r;
}

int store_list_records(store_t *s, int limit, int offset, store_record_t ***out, size_t *n) {
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    pthread_mutex_lock(&s->sync_mu);
    sqlite3_stmt *st = query(s->sync_db,
                             "SELECT " RECORD_COLUMNS " FROM `records` ORDER BY "
                             "julianday(`created_at`) DESC, rowid DESC LIMIT ? OFFSET ?",
                             "ii", (int64_t)limit, (int64_t)offset);
    int rc = st ? SQLITE_ROW : SQLITE_ERROR;
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
    store_record_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    util_uuid4(r->id);
    r->created_at = util_now_wall_ns();
    return r;
}

void store_record_free(store_record_t *r) {
    if (!r) return;
    char *strings[] = {r->ip,         r->body, r->response, r->model, r->upstream_endpoint,
                       r->user_agent, r->error};
    for (size_t i = 0; i < COUNT(strings); i++)
        free(strings[i]);
    free(r);
}
