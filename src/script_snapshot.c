/* script_snapshot.c: the scripts folder read into memory.
 *
 * Owns: walking the folder for *.lua files (bounded in count, bytes and depth), reading them
 * whole, their fingerprints (mtime, SHA-256) for GET /admin/scripts, and lookups by name.
 * Must not: touch Lua (hooks_load.c loads from the bytes), or run on the loop thread once the
 * loop runs (it is blocking I/O: reload.c calls it from a work thread). */
#include "route/script_snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <mbedtls/sha256.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct walk {
    script_snapshot_t *snap;
    size_t cap, bytes;
    char *err;
} walk_t;

static void walk_fail(walk_t *w, const char *fmt, ...) {
    if (w->err) return;
    va_list ap;
    va_start(ap, fmt);
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    w->err = strdup(msg);
    if (!w->err) w->err = strdup("out of memory");
}

static int ends_with_lua(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

static void sha256_hex(const char *data, size_t len, char out[65]) {
    unsigned char digest[32];
    out[0] = '\0';
    if (mbedtls_sha256_ret((const unsigned char *)data, len, digest, 0) != 0) return;
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

/* The whole file, NULL with errno EFBIG past limit bytes; size is what stat saw, but the read
 * decides (a file being rewritten). */
static char *read_whole(const char *path, size_t limit, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        if (cap >= limit) {
            free(buf);
            buf = NULL;
            errno = EFBIG;
            break;
        }
        char *bigger = realloc(buf, cap * 2 + 1);
        if (!bigger) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
        errno = EIO;
    } else if (buf && n > limit) {
        /* The read stops at the first short fread, which may land past the limit by up to
         * the last growth: the limit is on the bytes, not on the buffer. */
        free(buf);
        buf = NULL;
        errno = EFBIG;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static void add_file(walk_t *w, const char *path, const char *rel, const struct stat *st) {
    script_snapshot_t *s = w->snap;
    if (s->n_files >= SCRIPT_SNAPSHOT_MAX_FILES) {
        walk_fail(w, "%s: more than %d .lua files in the scripts folder", s->dir,
                  SCRIPT_SNAPSHOT_MAX_FILES);
        return;
    }
    if (s->n_files == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        script_file_t *grown = realloc(s->files, cap * sizeof(*grown));
        if (!grown) {
            walk_fail(w, "out of memory");
            return;
        }
        s->files = grown;
        w->cap = cap;
    }
    size_t len = 0;
    char *text = read_whole(path, SCRIPT_SNAPSHOT_MAX_BYTES - w->bytes, &len);
    if (!text) {
        walk_fail(w, "cannot read %s: %s", path,
                  errno == EFBIG ? "the scripts folder holds more than 16 MiB of .lua"
                                 : strerror(errno));
        return;
    }
    script_file_t *f = &s->files[s->n_files];
    f->name = strdup(rel);
    if (!f->name) {
        free(text);
        walk_fail(w, "out of memory");
        return;
    }
    f->text = text;
    f->len = len;
    f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    sha256_hex(text, len, f->sha256);
    w->bytes += len;
    s->n_files++;
}

static void walk_dir(walk_t *w, const char *dir, const char *rel, int depth) {
    DIR *d = opendir(dir);
    if (!d) {
        /* The folder itself may be missing (embedded hooks); a subfolder we cannot open is
         * an error, or its modules would silently vanish. */
        if (depth > 0 || errno != ENOENT) walk_fail(w, "cannot open %s: %s", dir, strerror(errno));
        return;
    }
    struct dirent *e;
    while (!w->err && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ".", "..", editors' hidden swap files */
        char path[4096], name[1024];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        if (snprintf(name, sizeof name, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >=
            (int)sizeof name)
            continue;
        struct stat st;
        if (stat(path, &st) != 0) continue; /* a dangling link, or a file just removed */
        if (S_ISDIR(st.st_mode)) {
            if (depth + 1 < SCRIPT_SNAPSHOT_MAX_DEPTH) walk_dir(w, path, name, depth + 1);
        } else if (S_ISREG(st.st_mode) && ends_with_lua(e->d_name)) {
            add_file(w, path, name, &st);
        }
    }
    closedir(d);
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const script_file_t *)a)->name, ((const script_file_t *)b)->name);
}

script_snapshot_t *script_snapshot_read(const char *dir, char **err) {
    if (err) *err = NULL;
    walk_t w = {0};
    w.snap = calloc(1, sizeof(*w.snap));
    if (!w.snap) goto oom;
    if (dir && *dir) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/')
            n--;
        w.snap->dir = strndup(dir, n);
        if (!w.snap->dir) goto oom;
        walk_dir(&w, w.snap->dir, "", 0);
    }
    if (w.err) {
        script_snapshot_free(w.snap);
        if (err)
            *err = w.err;
        else
            free(w.err);
        return NULL;
    }
    if (w.snap->n_files) qsort(w.snap->files, w.snap->n_files, sizeof(script_file_t), by_name);
    return w.snap;
oom:
    script_snapshot_free(w.snap);
    if (err) *err = strdup("out of memory");
    return NULL;
}

void script_snapshot_free(script_snapshot_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++) {
        free(s->files[i].name);
        free(s->files[i].text);
    }
    free(s->files);
    free(s->dir);
    free(s);
}

const script_file_t *script_snapshot_find(const script_snapshot_t *s, const char *name) {
    if (!s || !s->n_files) return NULL;
    script_file_t key = {.name = (char *)name};
    return bsearch(&key, s->files, s->n_files, sizeof(script_file_t), by_name);
}
