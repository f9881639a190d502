/* test_store.c: the store against temporary files: the GORM schema, upstream add/duplicate/
 * soft delete/revive/update, config, the loop cache and the writer thread (queued writes
 * visible after close and reopen), newest-first records across UTC offsets, and the in-place
 * migration of a database the Go program wrote. */
#include "route/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
                 "idx_records_created_at,idx_sk_endpoint") == 0);
    CHECK(strcmp(raw_text(path, "SELECT group_concat(name) FROM pragma_table_info('records')", text,
                          sizeof text),
                 "id,created_at,ip,body,response,elapsed_time,model,status,upstream_id,"
                 "upstream_endpoint,prompt_tokens,completion_tokens,total_tokens,response_time,"
                 "user_agent,error") == 0);
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

/* Refreshes the loop cache until cond holds, for at most two seconds. */
#define EVENTUALLY(s, cond)                                                                        \
    do {                                                                                           \
        for (int tries_ = 0; tries_ < 200; tries_++) {                                             \
            store_loop_refresh(s);                                                                 \
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

    /* Commits from other connections reach the cache on the next refresh. */
    store_loop_refresh(s);
    const store_upstream_list_t *ups = store_loop_upstreams(s);
    CHECK(ups->n == 1 && ups->items[0].id == id && strcmp(ups->items[0].sk, "sk-l") == 0);
    CHECK(store_loop_config(s, "policy") && strcmp(store_loop_config(s, "policy"), "main") == 0);
    CHECK(store_loop_config(s, "missing") == NULL);
    raw_exec(path, "INSERT INTO config_kvs (key, value) VALUES ('timeout', '5')");
    store_loop_refresh(s);
    CHECK(store_loop_config(s, "timeout") && strcmp(store_loop_config(s, "timeout"), "5") == 0);

    /* A loop config write shows at once and is never undone by a refresh. */
    store_loop_config_set(s, "policy", "round_robin");
    CHECK(strcmp(store_loop_config(s, "policy"), "round_robin") == 0);
    store_loop_config_set(s, "new_key", "1");
    CHECK(strcmp(store_loop_config(s, "new_key"), "1") == 0);
    store_loop_upstream_result(s, id, 1);
    store_loop_upstream_result(s, id, 1);
    store_loop_upstream_result(s, id, 0);
    for (int i = 0; i < 50; i++) {
        store_loop_refresh(s);
        CHECK(strcmp(store_loop_config(s, "policy"), "round_robin") == 0);
    }
    EVENTUALLY(s, store_loop_upstreams(s)->items[0].success_count == 2);
    ups = store_loop_upstreams(s);
    CHECK(ups->items[0].failed_count == 1 && ups->items[0].has_last_success);
    CHECK(llabs(ups->items[0].last_call_success_time - util_now_wall_ns()) < 10LL * 1000000000);

    /* Another process commits while the writer waits for the lock: the refresh that follows
     * re-reads config_kvs before the loop's own write is in it. */
    sqlite3 *other;
    sqlite3_open(path, &other);
    sqlite3_busy_timeout(other, 5000);
    CHECK(sqlite3_exec(other,
                       "BEGIN IMMEDIATE; UPDATE config_kvs SET value='6' WHERE key='timeout'", NULL,
                       NULL, NULL) == SQLITE_OK);
    store_loop_config_set(s, "policy", "x");
    store_loop_config_set(s, "other", "y");
    store_loop_config_set(s, "policy", "random");
    usleep(20000);
    CHECK(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(other);
    store_loop_refresh(s);
    CHECK(strcmp(store_loop_config(s, "timeout"), "6") == 0);
    CHECK(strcmp(store_loop_config(s, "policy"), "random") == 0);
    CHECK(strcmp(store_loop_config(s, "other"), "y") == 0);

    store_record_t *r = store_record_new();
    CHECK(r && strlen(r->id) == 36 && r->created_at > 0);
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
                 "16") == 0);
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
                 "16") == 0);
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
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return TEST_DONE();
}
