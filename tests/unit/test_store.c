/* test_store.c: the store against temporary files: the GORM schema, upstream add/duplicate/
 * soft delete/revive/update, config, the loop cache and the writer thread (queued writes
 * visible after close and reopen), newest-first records across UTC offsets, the in-place
 * migration of a database the Go program wrote, counters folded into one UPDATE per upstream,
 * the queue bound dropping the oldest rows, no flip-back of queued bumps, and another
 * process's write reaching a running loop through the async hand-over within 250 ms, and the
 * VFS calling a connection's pacer before its WAL writes (a COMMIT) and its database file
 * writes (a checkpoint). */
#include "route/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../src/store/store_internal.h"
#include "route/util.h"
#include "testlib.h"

static char dir[] = "/tmp/route-test-store-XXXXXX";

static void db_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

static store_t *open_ok(const char *path) {
    char *err = NULL;
    store_t *s = store_open(path, &err);
    if (!s) fprintf(stderr, "  store_open: %s\n", err);
    free(err);
    return s;
}

/* Runs SQL on a connection of the test's own, as another process (or the Go program) would. */
static int raw_exec(const char *path, const char *sql) {
    sqlite3 *db;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) fprintf(stderr, "  sql: %s\n", sqlite3_errmsg(db));
    sqlite3_close(db);
    return rc;
}

/* First column of the first row as text ("" when none). */
static char *raw_text(const char *path, const char *sql, char *out, size_t cap) {
    sqlite3 *db;
    sqlite3_stmt *st;
    out[0] = '\0';
    sqlite3_open(path, &db);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
            snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
}

static const store_upstream_t *find(const store_upstream_list_t *l, int64_t id) {
    for (size_t i = 0; i < l->n; i++)
        if (l->items[i].id == id) return &l->items[i];
    return NULL;
}

static void test_schema(void) {
    char path[256], text[1024];
    db_path(path, sizeof path, "schema.sqlite");
    store_t *s = open_ok(path);
    CHECK(s != NULL);
    store_close(s);
    /* Opening again must be a no-op on the schema. */
    CHECK((s = open_ok(path)) != NULL);
    store_close(s);

    CHECK(strcmp(raw_text(path, "SELECT sql FROM sqlite_master WHERE name='openai_upstreams'", text,
                          sizeof text),
                 "CREATE TABLE `openai_upstreams` (`id` integer,`created_at` datetime,"
                 "`updated_at` datetime,`deleted_at` datetime,`sk` text,`endpoint` text,"
                 "`success_count` integer,`failed_count` integer,`last_call_success_time` "
                 "datetime,PRIMARY KEY (`id`))") == 0);
    CHECK(strcmp(raw_text(path, "SELECT sql FROM sqlite_master WHERE name='config_kvs'", text,
                          sizeof text),
                 "CREATE TABLE `config_kvs` (`id` integer,`created_at` datetime,`updated_at` "
                 "datetime,`deleted_at` datetime,`key` text UNIQUE,`value` text,PRIMARY KEY "
                 "(`id`))") == 0);
    CHECK(strcmp(raw_text(path, "SELECT sql FROM sqlite_master WHERE name='idx_sk_endpoint'", text,
                          sizeof text),
                 "CREATE UNIQUE INDEX `idx_sk_endpoint` ON `openai_upstreams`(`sk`,`endpoint`)") ==
          0);
    CHECK(strcmp(raw_text(path,
                          "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master WHERE "
                          "type='index' AND name LIKE 'idx%' ORDER BY name)",
                          text, sizeof text),
                 "idx_config_kvs_deleted_at,idx_openai_upstreams_deleted_at,"
                 "idx_records_created_at,idx_records_failed,idx_records_model,"
                 "idx_records_upstream_id,idx_sk_endpoint") == 0);
    CHECK(strcmp(raw_text(path, "SELECT group_concat(name) FROM pragma_table_info('records')", text,
                          sizeof text),
                 "id,created_at,ip,body,response,elapsed_time,model,status,upstream_id,"
                 "upstream_endpoint,prompt_tokens,completion_tokens,total_tokens,response_time,"
                 "user_agent,error,cached_tokens,reasoning_tokens") == 0);
    CHECK(strcmp(raw_text(path, "PRAGMA journal_mode", text, sizeof text), "wal") == 0);

    char *err = NULL;
    CHECK(store_open("/nonexistent-dir/x.sqlite", &err) == NULL && err && *err);
    free(err);
}

static void test_upstreams(void) {
    char path[256], text[256];
    db_path(path, sizeof path, "upstreams.sqlite");
    store_t *s = open_ok(path);
    int64_t a = 0, b = 0, c = 0, again = 0;
    CHECK(store_add_upstream(s, "sk-a", "https://a/v1", &a) == STORE_OK && a == 1);
    CHECK(store_add_upstream(s, "sk-a", "https://a/v1", &again) == STORE_EXISTS);
    CHECK(store_add_upstream(s, "sk-a", "https://b/v1", &b) == STORE_OK && b == 2);
    CHECK(store_add_upstream(s, "sk-c", "https://c/v1", &c) == STORE_OK && c == 3);
    CHECK(strcmp(raw_text(path, "SELECT quote(last_call_success_time) FROM openai_upstreams", text,
                          sizeof text),
                 "NULL") == 0);

    store_upstream_list_t l;
    CHECK(store_list_upstreams(s, &l) == STORE_OK && l.n == 3);
    CHECK(l.items[0].id == 1 && strcmp(l.items[0].sk, "sk-a") == 0 &&
          strcmp(l.items[0].endpoint, "https://a/v1") == 0);
    CHECK(!l.items[0].has_last_success && l.items[0].last_call_success_time == 0);
    CHECK(l.items[0].success_count == 0 && l.items[0].failed_count == 0);
    CHECK(l.items[0].created_at > 0 && l.items[0].created_at == l.items[0].updated_at);
    store_upstream_list_free(&l);

    /* Update: NULL keeps a field; a live pair is taken; unknown ids are 404. */
    CHECK(store_update_upstream(s, a, NULL, "https://a2/v1") == STORE_OK);
    CHECK(store_update_upstream(s, a, "sk-a", "https://b/v1") == STORE_EXISTS);
    CHECK(store_update_upstream(s, 99, "x", NULL) == STORE_NOT_FOUND);
    CHECK(store_update_upstream(s, a, "sk-a", NULL) == STORE_OK); /* unchanged: fine */
    CHECK(store_list_upstreams(s, &l) == STORE_OK && find(&l, a) &&
          strcmp(find(&l, a)->sk, "sk-a") == 0 &&
          strcmp(find(&l, a)->endpoint, "https://a2/v1") == 0);
    store_upstream_list_free(&l);

    /* Soft delete hides the row everywhere; twice is 404. */
    raw_exec(path, "UPDATE openai_upstreams SET success_count=5, failed_count=7, "
                   "last_call_success_time='2023-08-10 13:32:51+08:00' WHERE id=2");
    CHECK(store_delete_upstream(s, b) == STORE_OK);
    CHECK(store_delete_upstream(s, b) == STORE_NOT_FOUND);
    CHECK(store_update_upstream(s, b, "x", NULL) == STORE_NOT_FOUND);
    CHECK(store_list_upstreams(s, &l) == STORE_OK && l.n == 2 && !find(&l, b));
    store_upstream_list_free(&l);
    CHECK(strcmp(raw_text(path, "SELECT deleted_at IS NOT NULL FROM openai_upstreams WHERE id=2",
                          text, sizeof text),
                 "1") == 0);

    /* Adding the deleted pair revives the same row, counters reset. */
    CHECK(store_add_upstream(s, "sk-a", "https://b/v1", &again) == STORE_OK && again == b);
    CHECK(store_list_upstreams(s, &l) == STORE_OK && l.n == 3 && find(&l, b));
    const store_upstream_t *u = find(&l, b);
    CHECK(u && u->success_count == 0 && u->failed_count == 0 && !u->has_last_success);
    store_upstream_list_free(&l);

    /* A deleted row does not block another row from taking its pair. */
    CHECK(store_delete_upstream(s, c) == STORE_OK);
    CHECK(store_update_upstream(s, a, "sk-c", "https://c/v1") == STORE_OK);
    CHECK(store_add_upstream(s, "sk-c", "https://c/v1", &again) == STORE_EXISTS);
    store_close(s);
}

static void collect(void *ud, const char *key, const char *value) {
    snprintf((char *)ud + strlen(ud), 256 - strlen(ud), "%s=%s;", key, value);
}

static void test_config(void) {
    char path[256];
    db_path(path, sizeof path, "config.sqlite");
    store_t *s = open_ok(path);
    CHECK(store_config_get(s, "policy") == NULL);
    CHECK(store_config_set(s, "policy", "main") == STORE_OK);
    CHECK(store_config_set(s, "authorization", "t1,t2") == STORE_OK);
    CHECK(store_config_set(s, "policy", "random") == STORE_OK);
    char *v = store_config_get(s, "policy");
    CHECK(v && strcmp(v, "random") == 0);
    free(v);
    char all[256] = "";
    CHECK(store_config_each(s, collect, all) == STORE_OK);
    CHECK(strcmp(all, "authorization=t1,t2;policy=random;") == 0);

    raw_exec(path, "UPDATE config_kvs SET deleted_at='2024-01-01 00:00:00+00:00' "
                   "WHERE key='policy'");
    CHECK(store_config_get(s, "policy") == NULL);
    CHECK(store_config_set(s, "policy", "main") == STORE_OK);
    CHECK((v = store_config_get(s, "policy")) && strcmp(v, "main") == 0);
    free(v);
    store_close(s);
}

/* What another connection committed, into the loop's view now (no loop runs here; the
 * server's poller does this every 100 ms). */
static void cache_reload(store_t *s) {
    store_loop_apply(s, store_snapshot_read(s));
}

/* Reloads the loop cache until cond holds, for at most two seconds. */
#define EVENTUALLY(s, cond)                                                                        \
    do {                                                                                           \
        for (int tries_ = 0; tries_ < 200; tries_++) {                                             \
            cache_reload(s);                                                                       \
            if (cond) break;                                                                       \
            usleep(10000);                                                                         \
        }                                                                                          \
        CHECK(cond);                                                                               \
    } while (0)

static void test_loop_and_writer(void) {
    char path[256];
    db_path(path, sizeof path, "loop.sqlite");
    store_t *s = open_ok(path);
    int64_t id;
    CHECK(store_add_upstream(s, "sk-l", "https://l/v1", &id) == STORE_OK);
    CHECK(store_config_set(s, "policy", "main") == STORE_OK);

    /* Commits from other connections reach the cache with the next snapshot. */
    cache_reload(s);
    const store_upstream_list_t *ups = store_loop_upstreams(s);
    CHECK(ups->n == 1 && ups->items[0].id == id && strcmp(ups->items[0].sk, "sk-l") == 0);
    CHECK(store_loop_config(s, "policy") && strcmp(store_loop_config(s, "policy"), "main") == 0);
    CHECK(store_loop_config(s, "missing") == NULL);
    raw_exec(path, "INSERT INTO config_kvs (key, value) VALUES ('timeout', '5')");
    cache_reload(s);
    CHECK(store_loop_config(s, "timeout") && strcmp(store_loop_config(s, "timeout"), "5") == 0);

    /* A loop config write shows at once and is never undone by a snapshot. */
    const char *why = NULL;
    CHECK(store_loop_config_set(s, "policy", "round_robin", &why) == 0);
    CHECK(strcmp(store_loop_config(s, "policy"), "round_robin") == 0);
    CHECK(store_loop_config_set(s, "new_key", "1", &why) == 0);
    CHECK(strcmp(store_loop_config(s, "new_key"), "1") == 0);
    store_loop_upstream_result(s, id, 1);
    store_loop_upstream_result(s, id, 1);
    store_loop_upstream_result(s, id, 0);
    for (int i = 0; i < 50; i++) {
        cache_reload(s);
        CHECK(strcmp(store_loop_config(s, "policy"), "round_robin") == 0);
    }
    EVENTUALLY(s, store_loop_upstreams(s)->items[0].success_count == 2);
    ups = store_loop_upstreams(s);
    CHECK(ups->items[0].failed_count == 1 && ups->items[0].has_last_success);
    CHECK(llabs(ups->items[0].last_call_success_time - util_now_wall_ns()) < 10LL * 1000000000);

    /* Another process commits while the writer waits for the lock: the snapshot that follows
     * re-reads config_kvs before the loop's own write is in it. */
    sqlite3 *other;
    sqlite3_open(path, &other);
    sqlite3_busy_timeout(other, 5000);
    CHECK(sqlite3_exec(other,
                       "BEGIN IMMEDIATE; UPDATE config_kvs SET value='6' WHERE key='timeout'", NULL,
                       NULL, NULL) == SQLITE_OK);
    CHECK(store_loop_config_set(s, "policy", "x", &why) == 0);
    CHECK(store_loop_config_set(s, "other", "y", &why) == 0);
    CHECK(store_loop_config_set(s, "policy", "random", &why) == 0);
    usleep(20000);
    CHECK(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(other);
    cache_reload(s);
    CHECK(strcmp(store_loop_config(s, "timeout"), "6") == 0);
    CHECK(strcmp(store_loop_config(s, "policy"), "random") == 0);
    CHECK(strcmp(store_loop_config(s, "other"), "y") == 0);

    /* config_kvs holds settings: keys, their length and the values' are bounded. */
    char long_key[STORE_CONFIG_KEY_MAX + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    CHECK(store_loop_config_set(s, long_key, "1", &why) == -1 && strcmp(why, "key too long") == 0);
    CHECK(store_loop_config_set(s, "", "1", &why) == -1 && strcmp(why, "empty key") == 0);
    char *long_value = malloc(STORE_CONFIG_VALUE_MAX + 2);
    memset(long_value, 'v', STORE_CONFIG_VALUE_MAX + 1);
    long_value[STORE_CONFIG_VALUE_MAX + 1] = '\0';
    CHECK(store_loop_config_set(s, "big", long_value, &why) == -1 &&
          strcmp(why, "value too long") == 0);
    free(long_value);
    int accepted = 0;
    for (int i = 0; i < STORE_CONFIG_KEYS_MAX + 10; i++) {
        char key[32];
        snprintf(key, sizeof key, "many_%d", i);
        if (store_loop_config_set(s, key, "1", &why) != 0) {
            CHECK(strcmp(why, "too many config keys") == 0);
            break;
        }
        accepted++;
    }
    CHECK(accepted > 1000 && accepted < STORE_CONFIG_KEYS_MAX);
    CHECK(store_loop_config_set(s, "many_0", "2", &why) == 0); /* an existing key still changes */

    store_record_t *r = store_record_new();
    CHECK(r && strlen(r->id) == 36 && r->created_at > 0);
    /* Time-ordered ids (UUIDv7): rows append to the primary key's index. */
    CHECK(r->id[14] == '7' && strchr("89ab", r->id[19]));
    usleep(2000);
    store_record_t *later = store_record_new();
    CHECK(later && strcmp(r->id, later->id) < 0);
    store_record_free(later);
    char id_copy[37];
    strcpy(id_copy, r->id);
    r->ip = strdup("10.0.0.1");
    r->body = malloc(5);
    memcpy(r->body, "a\0b\"c", 5);
    r->body_len = 5;
    r->response = strdup("hello");
    r->model = strdup("gpt-4o");
    r->upstream_endpoint = strdup("https://l/v1");
    r->user_agent = strdup("curl/8");
    r->error = strdup("boom");
    r->status = 200;
    r->upstream_id = id;
    r->elapsed_ns = 1234567890;
    r->response_time_ns = 12345;
    r->prompt_tokens = 3;
    r->completion_tokens = 4;
    r->total_tokens = 7;
    int64_t created = r->created_at;
    store_loop_record(s, r);
    for (int i = 0; i < 300; i++) {
        store_record_t *bulk = store_record_new();
        bulk->status = 499;
        store_loop_record(s, bulk);
    }
    store_close(s);

    /* Everything queued was written before close returned. */
    CHECK((s = open_ok(path)) != NULL);
    store_record_t **recs;
    size_t n;
    CHECK(store_list_records(s, 1000, 0, &recs, &n) == STORE_OK && n == 301);
    store_record_t *got = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i]->id, id_copy) == 0) got = recs[i];
    CHECK(got != NULL);
    if (got) {
        CHECK(got->created_at == created && got->status == 200 && got->upstream_id == id);
        CHECK(got->body_len == 5 && memcmp(got->body, "a\0b\"c", 5) == 0);
        CHECK(strcmp(got->ip, "10.0.0.1") == 0 && strcmp(got->response, "hello") == 0);
        CHECK(strcmp(got->model, "gpt-4o") == 0 && strcmp(got->user_agent, "curl/8") == 0);
        CHECK(strcmp(got->upstream_endpoint, "https://l/v1") == 0);
        CHECK(strcmp(got->error, "boom") == 0);
        CHECK(got->elapsed_ns == 1234567890 && got->response_time_ns == 12345);
        CHECK(got->prompt_tokens == 3 && got->completion_tokens == 4 && got->total_tokens == 7);
    }
    CHECK(n > 1 && recs[1]->model == NULL && recs[1]->response == NULL);
    for (size_t i = 0; i < n; i++)
        store_record_free(recs[i]);
    free(recs);
    char *v = store_config_get(s, "policy");
    CHECK(v && strcmp(v, "random") == 0);
    free(v);
    CHECK((v = store_config_get(s, "new_key")) && strcmp(v, "1") == 0);
    free(v);
    store_close(s);
}

static void test_record_order(void) {
    char path[256];
    db_path(path, sizeof path, "order.sqlite");
    store_t *s = open_ok(path);
    /* As text, the +08:00 row would sort first; as instants it is the oldest. */
    raw_exec(path, "INSERT INTO records (id, created_at, body) VALUES "
                   "('r1', '2023-08-10 13:00:00+08:00', 'oldest'),"
                   "('r2', '2023-08-10 06:00:00.5+00:00', 'newest'),"
                   "('r3', '2023-08-10 05:30:00Z', 'middle'),"
                   "('r4', '2023-08-10 05:30:00+00:00', 'middle, inserted later')");
    store_record_t **recs;
    size_t n;
    CHECK(store_list_records(s, 10, 0, &recs, &n) == STORE_OK && n == 4);
    if (n == 4)
        CHECK(strcmp(recs[0]->id, "r2") == 0 && strcmp(recs[1]->id, "r4") == 0 &&
              strcmp(recs[2]->id, "r3") == 0 && strcmp(recs[3]->id, "r1") == 0);
    for (size_t i = 0; i < n; i++)
        store_record_free(recs[i]);
    free(recs);
    CHECK(store_list_records(s, 2, 1, &recs, &n) == STORE_OK && n == 2);
    if (n == 2) CHECK(strcmp(recs[0]->id, "r4") == 0 && strcmp(recs[1]->id, "r3") == 0);
    for (size_t i = 0; i < n; i++)
        store_record_free(recs[i]);
    free(recs);
    CHECK(store_list_records(s, 10, 10, &recs, &n) == STORE_OK && n == 0);
    free(recs);
    store_close(s);
}

static void test_migration(void) {
    char path[256], text[256];
    db_path(path, sizeof path, "go.sqlite");
    /* What the Go program v0.1.0 left behind (records before this program's columns and
     * before elapsed_time even), with its zero time and +08:00 times. */
    CHECK(raw_exec(path,
                   "CREATE TABLE `openai_upstreams` (`id` integer,`created_at` datetime,"
                   "`updated_at` datetime,`deleted_at` datetime,`sk` text,`endpoint` text,"
                   "`success_count` integer,`failed_count` integer,"
                   "`last_call_success_time` datetime,PRIMARY KEY (`id`));"
                   "CREATE UNIQUE INDEX `idx_sk_endpoint` ON `openai_upstreams`(`sk`,`endpoint`);"
                   "CREATE INDEX `idx_openai_upstreams_deleted_at` ON "
                   "`openai_upstreams`(`deleted_at`);"
                   "CREATE TABLE `config_kvs` (`id` integer,`created_at` datetime,"
                   "`updated_at` datetime,`deleted_at` datetime,`key` text UNIQUE,`value` text,"
                   "PRIMARY KEY (`id`));"
                   "CREATE INDEX `idx_config_kvs_deleted_at` ON `config_kvs`(`deleted_at`);"
                   "CREATE TABLE `records` (`id` uuid,`created_at` datetime,`ip` text,"
                   "`body` text,`response` text,PRIMARY KEY (`id`));"
                   "INSERT INTO openai_upstreams VALUES (1,'2023-08-10 13:32:51.123+08:00',"
                   "'2023-08-10 13:32:51.123+08:00',NULL,'sk-go','https://api.openai.com/v1',"
                   "3,1,'0001-01-01 00:00:00+00:00');"
                   "INSERT INTO openai_upstreams VALUES (2,'2023-08-10 13:32:51+08:00',"
                   "'2023-08-10 13:32:51+08:00',NULL,'sk-go2','https://x/v1',"
                   "9,0,'2023-08-11 09:00:00.5+08:00');"
                   "INSERT INTO config_kvs VALUES (1,'2023-08-10 13:32:51+08:00',"
                   "'2023-08-10 13:32:51+08:00',NULL,'authorization','go-token');"
                   "INSERT INTO records VALUES ('7f1e0a52-5a9b-4b8e-9f0e-1d2c3b4a5f6e',"
                   "'2023-08-10 13:32:52.5+08:00','1.2.3.4','{\"model\":\"m\"}','hi');") ==
          SQLITE_OK);

    store_t *s = open_ok(path);
    CHECK(s != NULL);
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM pragma_table_info('records')", text,
                          sizeof text),
                 "18") == 0);
    store_upstream_list_t l;
    CHECK(store_list_upstreams(s, &l) == STORE_OK && l.n == 2);
    if (l.n == 2) {
        CHECK(strcmp(l.items[0].sk, "sk-go") == 0 && l.items[0].success_count == 3);
        CHECK(!l.items[0].has_last_success && l.items[0].last_call_success_time == 0);
        CHECK(l.items[0].created_at == 1691645571123000000LL);
        CHECK(l.items[1].has_last_success &&
              l.items[1].last_call_success_time == 1691715600500000000LL);
    }
    store_upstream_list_free(&l);
    char *v = store_config_get(s, "authorization");
    CHECK(v && strcmp(v, "go-token") == 0);
    free(v);

    store_record_t **recs;
    size_t n;
    CHECK(store_list_records(s, 100, 0, &recs, &n) == STORE_OK && n == 1);
    if (n == 1) {
        CHECK(strcmp(recs[0]->id, "7f1e0a52-5a9b-4b8e-9f0e-1d2c3b4a5f6e") == 0);
        CHECK(recs[0]->created_at == 1691645572500000000LL);
        CHECK(strcmp(recs[0]->body, "{\"model\":\"m\"}") == 0 && recs[0]->elapsed_ns == 0);
        CHECK(recs[0]->status == 0 && recs[0]->model == NULL);
        store_record_free(recs[0]);
    }
    free(recs);

    int64_t id;
    CHECK(store_add_upstream(s, "sk-new", "https://api.openai.com/v1", &id) == STORE_OK && id == 3);
    CHECK(store_add_upstream(s, "sk-go", "https://api.openai.com/v1", &id) == STORE_EXISTS);
    store_close(s);

    /* Migrating twice changes nothing. */
    CHECK((s = open_ok(path)) != NULL);
    store_close(s);
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM pragma_table_info('records')", text,
                          sizeof text),
                 "18") == 0);
}

/* ---- the writer: folding, the bound, no flip-back ---- */

/* Holds the write lock from another connection, so the writer blocks in BEGIN IMMEDIATE. */
static sqlite3 *hold_write_lock(const char *path) {
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "  lock: %s\n", sqlite3_errmsg(db));
        CHECK(0);
    }
    return db;
}

static void release_write_lock(sqlite3 *db) {
    CHECK(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
}

static store_stats_t stats_of(store_t *s) {
    store_stats_t st;
    store_stats(s, &st);
    return st;
}

/* Waits (two seconds at most) until the writer holds no queued row: it took them all. */
static int queue_taken(store_t *s) {
    for (int i = 0; i < 200; i++) {
        if (stats_of(s).queue_depth == 0) return 1;
        usleep(10000);
    }
    return 0;
}

static void test_folding(void) {
    char path[256], text[64];
    db_path(path, sizeof path, "fold.sqlite");
    store_t *s = open_ok(path);
    int64_t a, b;
    CHECK(store_add_upstream(s, "sk-a", "https://a/v1", &a) == STORE_OK);
    CHECK(store_add_upstream(s, "sk-b", "https://b/v1", &b) == STORE_OK);
    cache_reload(s);
    CHECK(raw_exec(path, "CREATE TABLE upd_log (id integer);"
                         "CREATE TRIGGER upd_count AFTER UPDATE ON openai_upstreams "
                         "BEGIN INSERT INTO upd_log VALUES (new.id); END") == SQLITE_OK);
    /* The writer is busy with a first row while 1000 results come in: they fold into one
     * UPDATE per upstream in the next batch. */
    sqlite3 *lock = hold_write_lock(path);
    store_loop_record(s, store_record_new());
    CHECK(queue_taken(s));
    for (int i = 0; i < 1000; i++)
        store_loop_upstream_result(s, i % 4 == 3 ? b : a, i % 10 != 9);
    const store_upstream_list_t *ups = store_loop_upstreams(s);
    CHECK(ups->n == 2 && ups->items[0].success_count == 700 && ups->items[0].failed_count == 50);
    CHECK(ups->items[1].success_count == 200 && ups->items[1].failed_count == 50);
    release_write_lock(lock);
    store_close(s);
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM upd_log", text, sizeof text), "2") == 0);
    CHECK(strcmp(raw_text(path,
                          "SELECT group_concat(success_count || '/' || failed_count) FROM "
                          "(SELECT * FROM openai_upstreams ORDER BY id)",
                          text, sizeof text),
                 "700/50,200/50") == 0);
    CHECK(raw_text(path, "SELECT last_call_success_time FROM openai_upstreams WHERE id=1", text,
                   sizeof text)[0] == '2');
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM records", text, sizeof text), "1") == 0);
}

static void test_bounded_drop(void) {
    char path[256], text[64];
    db_path(path, sizeof path, "drop.sqlite");
    store_t *s = open_ok(path);
    store_loop_set_records_queue_max(s, 100, SIZE_MAX);
    sqlite3 *lock = hold_write_lock(path);
    store_record_t *first = store_record_new();
    first->status = 1;
    store_loop_record(s, first);
    CHECK(queue_taken(s)); /* in the writer's hands: not queued, never dropped */
    for (int i = 0; i < 1000; i++) {
        store_record_t *r = store_record_new();
        r->status = 1000 + i;
        store_loop_record(s, r);
        /* Never below the bound: nothing goes until the queue holds more than 100. */
        if (i == 99) CHECK(stats_of(s).dropped_total == 0 && stats_of(s).queue_depth == 100);
    }
    store_stats_t st = stats_of(s);
    CHECK(st.queue_depth == 100 && st.dropped_total == 900 && st.written_total == 0);
    release_write_lock(lock);
    store_close(s);
    /* The first row, then the newest 100: the oldest queued ones were dropped. */
    CHECK(strcmp(raw_text(path,
                          "SELECT count(*) || ',' || min(status) || ',' || max(status) FROM "
                          "records WHERE status >= 1000",
                          text, sizeof text),
                 "100,1900,1999") == 0);
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM records WHERE status = 1", text, sizeof text),
                 "1") == 0);
}

/* Rows go in multi-row INSERTs of 16: a row the database refuses (here a duplicate id) fails
 * its whole group, and the group's other rows are then written one by one: only that row is
 * lost (counted as dropped), the rows of the other groups and the tail are all there. */
static void test_refused_row_in_a_group(void) {
    char path[256], text[64];
    db_path(path, sizeof path, "group.sqlite");
    store_t *s = open_ok(path);
    sqlite3 *lock = hold_write_lock(path);
    store_record_t *first = store_record_new();
    first->status = 1;
    store_loop_record(s, first);
    CHECK(queue_taken(s));
    char dup_id[37] = "";
    for (int i = 0; i < 40; i++) { /* two groups of 16 and a tail of 8 */
        store_record_t *r = store_record_new();
        r->status = 100 + i;
        if (i == 20) strcpy(dup_id, r->id);
        if (i == 25) strcpy(r->id, dup_id); /* in the second group */
        store_loop_record(s, r);
    }
    release_write_lock(lock);
    store_close(s);
    CHECK(strcmp(raw_text(path,
                          "SELECT count(*) || ',' || sum(status) FROM records WHERE status >= 100",
                          text, sizeof text),
                 "39,4655") == 0); /* 100..139 but 125: 4780 - 125 */
    CHECK(
        strcmp(raw_text(path, "SELECT count(*) FROM records WHERE status = 125", text, sizeof text),
               "0") == 0);
    CHECK((s = open_ok(path)) != NULL);
    store_close(s);
}

/* The byte bound: with 20 KB bodies and a 1 MiB cap, the queue holds about 50 rows whatever
 * the row bound says, the oldest go first, and a single row over the cap is still kept. */
static void test_bounded_bytes(void) {
    char path[256], text[64];
    db_path(path, sizeof path, "drop_bytes.sqlite");
    store_t *s = open_ok(path);
    store_loop_set_records_queue_max(s, 100000, 1 << 20);
    sqlite3 *lock = hold_write_lock(path);
    store_record_t *first = store_record_new();
    first->status = 1;
    store_loop_record(s, first);
    CHECK(queue_taken(s));
    const size_t body = 20 * 1024;
    for (int i = 0; i < 500; i++) {
        store_record_t *r = store_record_new();
        r->status = 1000 + i;
        r->body = calloc(1, body + 1);
        memset(r->body, 'x', body);
        r->body_len = body;
        store_loop_record(s, r);
    }
    store_stats_t st = stats_of(s);
    CHECK(st.queue_bytes <= (1 << 20) && st.queue_bytes > (1 << 20) - 2 * (body + 512));
    CHECK(st.queue_depth >= 45 && st.queue_depth <= 52);
    CHECK(st.dropped_total == 500 - st.queue_depth);
    /* One row bigger than the whole cap is kept (the cap must not mean "never record it"). */
    store_record_t *big = store_record_new();
    big->status = 2;
    big->body = calloc(1, (2 << 20) + 1);
    memset(big->body, 'y', 2 << 20);
    big->body_len = 2 << 20;
    store_loop_record(s, big);
    st = stats_of(s);
    CHECK(st.queue_depth == 1 && st.dropped_total == 500);
    release_write_lock(lock);
    store_close(s);
    CHECK(strcmp(raw_text(path, "SELECT count(*) FROM records WHERE status = 2", text, sizeof text),
                 "1") == 0);
}

static void test_no_flip_back(void) {
    char path[256], text[64];
    db_path(path, sizeof path, "flip.sqlite");
    store_t *s = open_ok(path);
    int64_t a;
    CHECK(store_add_upstream(s, "sk-a", "https://a/v1", &a) == STORE_OK);
    cache_reload(s);
    /* Bumps the writer cannot write yet survive any number of snapshots. */
    sqlite3 *lock = hold_write_lock(path);
    store_loop_record(s, store_record_new());
    CHECK(queue_taken(s));
    for (int i = 0; i < 5; i++)
        store_loop_upstream_result(s, a, 1);
    for (int i = 0; i < 3; i++) {
        cache_reload(s);
        CHECK(store_loop_upstreams(s)->items[0].success_count == 5);
    }
    release_write_lock(lock);
    /* Interleaved with the writer committing: every snapshot shows exactly what was issued,
     * never less (flip-back) nor more (counted twice). */
    int64_t issued = 5, wrong = 0;
    for (int i = 0; i < 300; i++) {
        store_loop_upstream_result(s, a, 1);
        issued++;
        if (i % 3 == 0) cache_reload(s);
        if (store_loop_upstreams(s)->items[0].success_count != issued) wrong++;
        if (i % 50 == 0) usleep(2000);
    }
    CHECK(wrong == 0);
    EVENTUALLY(
        s, strcmp(raw_text(path, "SELECT success_count FROM openai_upstreams", text, sizeof text),
                  "305") == 0);
    cache_reload(s);
    CHECK(store_loop_upstreams(s)->items[0].success_count == 305);
    store_close(s);
}

/* ---- changes by another process, through the loop's async handle ---- */

typedef struct watch {
    store_t *s;
    const char *path;
    int64_t started_ns, seen_ns;
    uint64_t config_gen, upstreams_gen;
    int phase;
    uv_timer_t timer;
} watch_t;

static void on_watch_tick(uv_timer_t *t) {
    watch_t *w = t->data;
    int64_t now = util_now_mono_ns();
    const char *v = store_loop_config(w->s, "external");
    if (w->phase == 0 && v && strcmp(v, "yes") == 0) {
        w->seen_ns = now;
        w->phase = 1;
    }
    if (w->phase == 1 || now - w->started_ns > 2000000000LL) uv_stop(t->loop);
}

static void close_walk(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void test_external_change_async(void) {
    char path[256];
    db_path(path, sizeof path, "async.sqlite");
    store_t *s = open_ok(path);
    int64_t a;
    CHECK(store_add_upstream(s, "sk-a", "https://a/v1", &a) == STORE_OK);
    uv_loop_t loop;
    uv_loop_init(&loop);
    CHECK(store_attach_loop(s, &loop) == 0);
    CHECK(store_loop_upstreams(s)->n == 1); /* attach reads what was written since open */

    /* The writer's own commits (records, counters) trigger no re-read. Once the first poll has
     * seen the add above: */
    usleep(250000);
    uv_run(&loop, UV_RUN_NOWAIT);
    uint64_t reloads = stats_of(s).external_reloads;
    uint64_t ugen = store_loop_upstreams_generation(s), cgen = store_loop_config_generation(s);
    for (int i = 0; i < 500; i++) {
        store_loop_record(s, store_record_new());
        store_loop_upstream_result(s, a, 1);
        if (i % 100 == 0) usleep(50000);
    }
    for (int i = 0; i < 200 && stats_of(s).written_total < 500; i++)
        usleep(10000);
    usleep(150000); /* more than a poll period after the last commit */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(stats_of(s).written_total == 500);
    CHECK(stats_of(s).external_reloads == reloads);
    CHECK(store_loop_upstreams_generation(s) == ugen && store_loop_config_generation(s) == cgen);
    CHECK(store_loop_upstreams(s)->items[0].success_count == 500);

    /* Another process's write, seen by the running loop within 250 ms. */
    watch_t w = {.s = s, .path = path};
    uv_timer_init(&loop, &w.timer);
    w.timer.data = &w;
    w.started_ns = util_now_mono_ns();
    CHECK(raw_exec(path, "INSERT INTO config_kvs (key, value) VALUES ('external', 'yes')") ==
          SQLITE_OK);
    uv_timer_start(&w.timer, on_watch_tick, 1, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(w.phase == 1);
    double ms = (double)(w.seen_ns - w.started_ns) / 1e6;
    printf("external -set seen by the loop after %.1f ms\n", ms);
    CHECK(w.phase == 1 && ms < 250);
    CHECK(store_loop_config_generation(s) != cgen);
    CHECK(store_loop_upstreams_generation(s) == ugen);
    CHECK(stats_of(s).external_reloads == reloads + 1);
    /* Its counters as committed, and still all 500 bumps. */
    CHECK(store_loop_upstreams(s)->items[0].success_count == 500);

    /* An upstream added elsewhere moves the upstreams generation. */
    CHECK(raw_exec(path, "INSERT INTO openai_upstreams (sk, endpoint, success_count, "
                         "failed_count) VALUES ('sk-x', 'https://x/v1', 0, 0)") == SQLITE_OK);
    for (int i = 0; i < 100 && store_loop_upstreams(s)->n != 2; i++) {
        usleep(10000);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    CHECK(store_loop_upstreams(s)->n == 2 && store_loop_upstreams_generation(s) != ugen);

    store_detach_loop(s);
    store_detach_loop(s); /* idempotent */
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    store_close(s);
}

static void count_pace(void *arg) {
    (*(int *)arg)++;
}

/* The writer offers its core through the pacer during commits and checkpoints (writer.c): both
 * are file writes SQLite makes on its own, so only the VFS can pace them. */
static void test_vfs_pacer(void) {
    char path[256];
    db_path(path, sizeof path, "pacer.sqlite");
    char *err = NULL;
    sqlite3 *db = store_db_open(path, 1000, &err);
    CHECK(db != NULL);
    free(err);
    if (!db) return;
    CHECK(store_exec(db, "PRAGMA journal_mode=WAL") == 0);
    CHECK(store_exec(db, "CREATE TABLE t(x)") == 0);
    int calls = 0;
    store_pacer_t pacer = {.pace = count_pace, .arg = &calls};
    /* Set after the WAL was opened: the WAL file finds it through its database file. */
    CHECK(store_vfs_set_pacer(db, &pacer) == SQLITE_OK);
    CHECK(store_exec(db, "INSERT INTO t VALUES (randomblob(100000))") == 0);
    int after_commit = calls;
    CHECK(after_commit > 0);
    CHECK(sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) == SQLITE_OK);
    CHECK(calls > after_commit);
    /* Another connection to the same file has no pacer. */
    sqlite3 *other = store_db_open(path, 1000, &err);
    CHECK(other != NULL);
    free(err);
    int before = calls;
    CHECK(store_exec(other, "INSERT INTO t VALUES (1)") == 0);
    CHECK(calls == before);
    sqlite3_close(other);
    sqlite3_close(db);
}

int main(void) {
    setenv("TZ", "CST-8", 1);
    tzset();
    if (!mkdtemp(dir)) return 1;
    test_schema();
    test_upstreams();
    test_config();
    test_loop_and_writer();
    test_record_order();
    test_migration();
    test_folding();
    test_bounded_drop();
    test_refused_row_in_a_group();
    test_bounded_bytes();
    test_no_flip_back();
    test_external_change_async();
    test_vfs_pacer();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return TEST_DONE();
}
