/* test_script_snapshot.c: the scripts folder read into memory, and its bounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "route/script_snapshot.h"
#include "testlib.h"

static void write_file(const char *dir, const char *name, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    char block[4096];
    memset(block, '-', sizeof block); /* a Lua comment line, whatever its length */
    for (size_t left = len; left;) {
        size_t n = left < sizeof block ? left : sizeof block;
        fwrite(block, 1, n, f);
        left -= n;
    }
    fclose(f);
}

static void remove_files(const char *dir, const char *const *names) {
    char path[512];
    for (; *names; names++) {
        snprintf(path, sizeof path, "%s/%s", dir, *names);
        unlink(path);
    }
}

static void test_reads_and_finds(void) {
    char dir[] = "/tmp/route_snap_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "route.lua", 10);
    write_file(dir, "b.lua", 5000);
    write_file(dir, "notes.txt", 10);
    char *err = NULL;
    script_snapshot_t *s = script_snapshot_read(dir, &err);
    CHECK(s != NULL && err == NULL);
    CHECK(s && s->n_files == 2);
    const script_file_t *f = script_snapshot_find(s, "b.lua");
    CHECK(f && f->len == 5000);
    CHECK(script_snapshot_find(s, "notes.txt") == NULL);
    script_snapshot_free(s);
    free(err);
    remove_files(dir, (const char *const[]){"route.lua", "b.lua", "notes.txt", NULL});
    rmdir(dir);
}

/* The folder's total is bounded in bytes, not in buffer sizes: a second file whose size lies
 * between what was left and the read buffer's next doubling used to be taken whole, and the
 * total past the bound then let every later file through unbounded. */
static void test_total_bytes_bound(void) {
    char dir[] = "/tmp/route_snap_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const size_t mib = (size_t)1 << 20;
    write_file(dir, "a.lua", 13 * mib);          /* 3 MiB left */
    write_file(dir, "b.lua", 3 * mib + mib / 2); /* read into a 4 MiB buffer */
    char *err = NULL;
    script_snapshot_t *s = script_snapshot_read(dir, &err);
    CHECK(s == NULL);
    CHECK(err && strstr(err, "more than 16 MiB"));
    if (err) fprintf(stderr, "(expected) %s\n", err);
    script_snapshot_free(s);
    free(err);

    /* Exactly at the bound is fine. */
    write_file(dir, "b.lua", 3 * mib);
    err = NULL;
    s = script_snapshot_read(dir, &err);
    CHECK(s != NULL && err == NULL);
    CHECK(s && s->n_files == 2);
    script_snapshot_free(s);
    free(err);
    remove_files(dir, (const char *const[]){"a.lua", "b.lua", NULL});
    rmdir(dir);
}

static void test_missing_folder_is_empty(void) {
    char *err = NULL;
    script_snapshot_t *s = script_snapshot_read("/nonexistent/route_snap", &err);
    CHECK(s != NULL && s->n_files == 0 && err == NULL);
    script_snapshot_free(s);
}

int main(void) {
    test_reads_and_finds();
    test_total_bytes_bound();
    test_missing_folder_is_empty();
    return TEST_DONE();
}
