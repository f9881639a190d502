/* test_records_query.c: the store's filtered records queries (store_query_records: each
 * filter, combinations where the index is chosen by counting, instants across UTC offsets,
 * bounds inclusive/exclusive, paging), the row-by-row walk of -export (store_each_record:
 * oldest first, early stop), and the read-only open of -check (nothing created or migrated). */
#include "route/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route/util.h"
#include "testlib.h"

static char dir[] = "/tmp/route-test-records-query-XXXXXX";

static int raw_exec(const char *path, const char *sql) {
    sqlite3 *db;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) fprintf(stderr, "  sql: %s\n", sqlite3_errmsg(db));
    sqlite3_close(db);
    return rc;
}

/* The ids of a page, newest first, comma-joined into out. */
static int page(store_t *s, const store_record_filter_t *f, int limit, int offset, char *out,
                size_t cap) {
    store_record_t **recs;
    size_t n;
    out[0] = '\0';
    if (store_query_records(s, f, limit, offset, &recs, &n) != STORE_OK) return -1;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "," : "", recs[i]->id);
        store_record_free(recs[i]);
    }
    free(recs);
    return 0;
}

static int64_t at(const char *text) {
    int64_t ns = 0;
    CHECK(util_parse_db_time(text, &ns) == 0);
    return ns;
}

/* r1..r6 in time order (offsets mixed), models a/b, statuses, upstreams. */
static const char ROWS[] =
    "INSERT INTO records (id, created_at, model, status, upstream_id) VALUES "
    "('r1', '2024-05-01 08:00:00+08:00', 'a', 200, 1),"   /* 00:00Z */
    "('r2', '2024-05-01 01:00:00Z', 'b', 500, 2),"        /* 01:00Z */
    "('r3', '2024-04-30 21:00:00-05:00', 'a', 500, 1),"   /* 02:00Z */
    "('r4', '2024-05-01 03:00:00.5+00:00', 'a', 200, 2)," /* 03:00:00.5Z */
    "('r5', '2024-05-01 12:00:00+08:00', 'b', 200, 0),"   /* 04:00Z */
    "('r6', '2024-05-01 05:00:00+00:00', 'a', 429, 1)";   /* 05:00Z */

static void test_filters(store_t *s) {
    char ids[256];
    store_record_filter_t f = {0};
    CHECK(page(s, NULL, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r6,r5,r4,r3,r2,r1") == 0);
    f.model = "a";
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r6,r4,r3,r1") == 0);
    f = (store_record_filter_t){.has_status = 1, .status = 500};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r3,r2") == 0);
    f = (store_record_filter_t){.has_upstream_id = 1, .upstream_id = 0};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r5") == 0);
    /* since inclusive (to the millisecond, as julianday), until exclusive. */
    f = (store_record_filter_t){.has_since = 1, .since_ns = at("2024-05-01T03:00:00.5Z")};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r6,r5,r4") == 0);
    f = (store_record_filter_t){.has_until = 1, .until_ns = at("2024-05-01T11:00:00+08:00")};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r3,r2,r1") == 0);
    /* Two and three equality conditions: the index is chosen by counting; same rows. */
    f = (store_record_filter_t){.model = "a", .has_status = 1, .status = 200};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r4,r1") == 0);
    f = (store_record_filter_t){.model = "a",
                                .has_status = 1,
                                .status = 500,
                                .has_upstream_id = 1,
                                .upstream_id = 1,
                                .has_since = 1,
                                .since_ns = at("2024-05-01")};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "r3") == 0);
    f = (store_record_filter_t){.model = "a", .has_upstream_id = 1, .upstream_id = 1};
    CHECK(page(s, &f, 1, 1, ids, sizeof ids) == 0 && strcmp(ids, "r3") == 0);
    f = (store_record_filter_t){.model = "none", .has_status = 1, .status = 200};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "") == 0);
    /* A value is data: a quote in it is no SQL. */
    f = (store_record_filter_t){.model = "a' OR '1'='1"};
    CHECK(page(s, &f, 100, 0, ids, sizeof ids) == 0 && strcmp(ids, "") == 0);
}

typedef struct walk {
    char ids[256];
    size_t len;
    int stop_after;
} walk_t;

static int on_row(void *ud, const store_record_t *r) {
    walk_t *w = ud;
    w->len +=
        (size_t)snprintf(w->ids + w->len, sizeof w->ids - w->len, "%s%s", w->len ? "," : "", r->id);
    return --w->stop_after == 0;
}

static void test_each(store_t *s) {
    walk_t w = {.stop_after = -1};
    CHECK(store_each_record(s, NULL, on_row, &w) == STORE_OK);
    CHECK(strcmp(w.ids, "r1,r2,r3,r4,r5,r6") == 0);
    w = (walk_t){.stop_after = 2};
    store_record_filter_t f = {.model = "a"};
    CHECK(store_each_record(s, &f, on_row, &w) == STORE_OK && strcmp(w.ids, "r1,r3") == 0);
    w = (walk_t){.stop_after = -1};
    f = (store_record_filter_t){.model = "b", .has_since = 1, .since_ns = at("2024-05-01T02:00Z")};
    CHECK(store_each_record(s, &f, on_row, &w) == STORE_OK && strcmp(w.ids, "r5") == 0);
}

static void test_readonly(void) {
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/go.sqlite", dir);
    char *err = NULL;
    CHECK(store_open_readonly(path, &err) == NULL && err != NULL);
    free(err);
    CHECK(stat(path, &st) != 0); /* not created */
    CHECK(raw_exec(path,
                   "CREATE TABLE `openai_upstreams` (`id` integer,`created_at` datetime,"
                   "`updated_at` datetime,`deleted_at` datetime,`sk` text,`endpoint` text,"
                   "`success_count` integer,`failed_count` integer,"
                   "`last_call_success_time` datetime,PRIMARY KEY (`id`));"
                   "CREATE TABLE `config_kvs` (`id` integer,`created_at` datetime,"
                   "`updated_at` datetime,`deleted_at` datetime,`key` text UNIQUE,"
                   "`value` text,PRIMARY KEY (`id`));"
                   "CREATE TABLE `records` (`id` uuid,`created_at` datetime,`ip` text,"
                   "`body` text,`response` text,`elapsed_time` integer,PRIMARY KEY (`id`));"
                   "INSERT INTO config_kvs (key, value) VALUES ('timeout', '60');"
                   "INSERT INTO openai_upstreams (id, sk, endpoint) VALUES (1, 'sk', 'e');") ==
          SQLITE_OK);
    store_t *s = store_open_readonly(path, &err);
    CHECK(s != NULL);
    if (!s) {
        fprintf(stderr, "  store_open_readonly: %s\n", err);
        free(err);
        return;
    }
    const char *v = store_loop_config(s, "timeout");
    CHECK(v && strcmp(v, "60") == 0);
    CHECK(store_loop_upstreams(s)->n == 1);
    store_close(s);
    /* Not migrated: no column or index added. */
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('records') WHERE name='model'",
                       -1, &q, NULL);
    CHECK(sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
}

int main(void) {
    setenv("TZ", "CST-8", 1);
    tzset();
    if (!mkdtemp(dir)) return 1;
    char path[256], *err = NULL;
    snprintf(path, sizeof path, "%s/db.sqlite", dir);
    store_t *s = store_open(path, &err);
    CHECK(s != NULL);
    if (s) {
        CHECK(raw_exec(path, ROWS) == SQLITE_OK);
        test_filters(s);
        test_each(s);
        store_close(s);
    }
    free(err);
    test_readonly();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return TEST_DONE();
}
