/* reload.c: the scripts folder watch and the bookkeeping of reloads.
 *
 * Owns: the uv_fs_event watch on the folder (any *.lua created, written or renamed over),
 * the debounce timer, the reload count and last error, and the fingerprints (size, mtime,
 * SHA-256) of the files that were loaded, for GET /admin/scripts.
 * Must not: load Lua itself (hooks.c does, and keeps the running hooks when a load fails). */
#include "route/reload.h"

#include <dirent.h>
#include <errno.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "route/hooks.h"
#include "route/metrics.h"
#include "route/store.h"

/* Editors save as write-temp, rename-over, chmod: one reload for the lot. */
#define DEBOUNCE_MS 150

typedef struct script_file {
    char name[256];
    int64_t size;
    int64_t mtime_ns;
    char sha256[65];
} script_file_t;

struct reloader {
    route_ctx_t *ctx;
    char *dir;
    uv_fs_event_t watch;
    uv_timer_t debounce;
    int watching;
    int64_t loaded_at;
    char last_trigger[32];
    char *last_error;
    unsigned reloads;
    script_file_t *files;
    size_t n_files;
};

static int ends_with_lua(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

static void hash_file(const char *path, char out[65]) {
    out[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return;
    mbedtls_sha256_context sha;
    mbedtls_sha256_init(&sha);
    unsigned char buf[8192], digest[32];
    size_t n;
    int ok = mbedtls_sha256_starts_ret(&sha, 0) == 0;
    while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
        ok = mbedtls_sha256_update_ret(&sha, buf, n) == 0;
    ok = ok && !ferror(f) && mbedtls_sha256_finish_ret(&sha, digest) == 0;
    fclose(f);
    mbedtls_sha256_free(&sha);
    if (!ok) return;
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const script_file_t *)a)->name, ((const script_file_t *)b)->name);
}

/* Fingerprints the folder's scripts as they were just loaded. The files are small and this
 * runs only at start-up and on a reload, which reads them anyway. */
static void fingerprint(reloader_t *r) {
    free(r->files);
    r->files = NULL;
    r->n_files = 0;
    DIR *d = r->dir ? opendir(r->dir) : NULL;
    if (!d) return;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ends_with_lua(e->d_name) || strlen(e->d_name) >= sizeof(r->files->name)) continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", r->dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (r->n_files == cap) {
            cap = cap ? cap * 2 : 8;
            script_file_t *grown = realloc(r->files, cap * sizeof(*grown));
            if (!grown) break;
            r->files = grown;
        }
        script_file_t *f = &r->files[r->n_files++];
        snprintf(f->name, sizeof(f->name), "%s", e->d_name);
        f->size = st.st_size;
        f->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        hash_file(path, f->sha256);
    }
    closedir(d);
    if (r->n_files) qsort(r->files, r->n_files, sizeof(*r->files), by_name);
}

int reloader_reload(reloader_t *r, const char *trigger, char **err) {
    char *msg = NULL;
    int rc = hooks_reload(r->ctx->hooks, &msg);
    snprintf(r->last_trigger, sizeof(r->last_trigger), "%s", trigger);
    metrics_observe_reload(r->ctx->metrics, rc == 0);
    if (rc == 0) {
        r->reloads++;
        r->loaded_at = util_now_wall_ns();
        free(r->last_error);
        r->last_error = NULL;
        fingerprint(r);
        route_log(LOG_INFO, "%s: scripts reloaded", trigger);
        if (err) *err = NULL;
        free(msg);
        return 0;
    }
    route_log(LOG_ERROR, "%s: reload failed, the running scripts stay: %s", trigger,
              msg ? msg : "unknown error");
    free(r->last_error);
    r->last_error = msg ? strdup(msg) : NULL;
    if (err)
        *err = msg;
    else
        free(msg);
    return -1;
}

static void on_debounced(uv_timer_t *t) {
    reloader_t *r = t->data;
    reloader_reload(r, "file change", NULL);
}

static void on_folder_event(uv_fs_event_t *w, const char *filename, int events, int status) {
    reloader_t *r = w->data;
    if (status < 0) {
        route_log(LOG_WARN, "scripts watch: %s", uv_strerror(status));
        return;
    }
    /* No name means the folder itself changed: look again to be safe. */
    if (filename && !ends_with_lua(filename)) return;
    uv_timer_start(&r->debounce, on_debounced, DEBOUNCE_MS, 0);
}

reloader_t *reloader_new(route_ctx_t *ctx, const char *scripts_dir) {
    reloader_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->ctx = ctx;
    r->dir = scripts_dir && *scripts_dir ? strdup(scripts_dir) : NULL;
    r->loaded_at = util_now_wall_ns();
    snprintf(r->last_trigger, sizeof(r->last_trigger), "start-up");
    fingerprint(r);
    uv_timer_init(ctx->loop, &r->debounce);
    r->debounce.data = r;
    struct stat st;
    if (r->dir && stat(r->dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        uv_fs_event_init(ctx->loop, &r->watch);
        r->watch.data = r;
        int rc = uv_fs_event_start(&r->watch, on_folder_event, r->dir, 0);
        if (rc == 0)
            r->watching = 1;
        else
            route_log(LOG_WARN, "cannot watch %s for script changes: %s", r->dir, uv_strerror(rc));
    }
    return r;
}

void reloader_free(reloader_t *r) {
    if (!r) return;
    free(r->dir);
    free(r->last_error);
    free(r->files);
    free(r);
}

void reloader_status_json(const reloader_t *r, buf_t *out) {
    char t[64];
    buf_appends(out, "{\"folder\":");
    if (r->dir)
        buf_append_json_string(out, r->dir, strlen(r->dir));
    else
        buf_appends(out, "null");
    util_format_json_time(t, sizeof(t), r->loaded_at);
    buf_printf(out, ",\"watching\":%s,\"loaded_at\":\"%s\",\"last_trigger\":",
               r->watching ? "true" : "false", t);
    buf_append_json_string(out, r->last_trigger, strlen(r->last_trigger));
    buf_printf(out, ",\"reloads\":%u,\"last_error\":", r->reloads);
    if (r->last_error)
        buf_append_json_string(out, r->last_error, strlen(r->last_error));
    else
        buf_appends(out, "null");
    buf_appends(out, ",\"files\":[");
    for (size_t i = 0; i < r->n_files; i++) {
        const script_file_t *f = &r->files[i];
        util_format_json_time(t, sizeof(t), f->mtime_ns);
        buf_appends(out, i ? ",{\"name\":" : "{\"name\":");
        buf_append_json_string(out, f->name, strlen(f->name));
        buf_printf(out, ",\"size\":%lld,\"mtime\":\"%s\",\"sha256\":\"%s\"}", (long long)f->size, t,
                   f->sha256);
    }
    buf_appends(out, "]}");
}
