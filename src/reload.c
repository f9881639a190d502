/* reload.c: the scripts folder watch and the bookkeeping of reloads.
 *
 * Owns: the uv_fs_event watches on the folder and on its subfolders that hold modules (any
 * *.lua created, written or renamed over; a subfolder made), the debounce timer, reading the folder
 * on a work thread (a script_snapshot_t) and handing it to the hooks on the loop, the bounded list
 * of callers waiting for a reload's result, the reload count and last error, and GET
 * /admin/scripts' view of the loaded files. Must not: load Lua itself (hooks_load.c does, and keeps
 * the running hooks when a load fails), or read a file on the loop thread. */
#include "route/reload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "route/hooks.h"
#include "route/metrics.h"
#include "route/script_snapshot.h"
#include "route/store.h"

/* Editors save as write-temp, rename-over, chmod: one reload for the lot. */
#define DEBOUNCE_MS 150
/* Callers (admin requests, signals) waiting on one reload; past this they are answered at
 * once with an error rather than queued without bound. */
#define WAITERS_MAX 64
/* Subfolders watched (each a watch of its own: Linux has no recursive one); the modules of
 * those past it reload on the other triggers only (logged). */
#define SUBWATCHES_MAX 64

typedef struct reload_waiter {
    reload_done_cb cb;
    void *data;
} reload_waiter_t;

typedef struct subwatch {
    uv_fs_event_t handle; /* first: the close callback finds the subwatch from it */
    char *rel;            /* the subfolder, relative to the scripts folder */
} subwatch_t;

typedef struct reload_batch {
    reload_waiter_t w[WAITERS_MAX];
    size_t n;
    char trigger[32];
} reload_batch_t;

struct reloader {
    route_ctx_t *ctx;
    char *dir;
    uv_fs_event_t watch;
    uv_timer_t debounce;
    uv_work_t work;
    int watching;
    int reading;             /* a work request is reading the folder */
    int again;               /* asked while reading: read once more after */
    script_snapshot_t *read; /* the work thread's result */
    char *read_err;
    reload_batch_t current, next;
    int64_t loaded_at;
    char last_trigger[32];
    char *last_error;
    unsigned reloads;
    unsigned long waiters_refused;
    log_limiter_t refused_log;
    subwatch_t *subs[SUBWATCHES_MAX];
    size_t n_subs;
    log_limiter_t watch_log;
};

static int ends_with_lua(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

static void watch_subfolders(reloader_t *r, const script_snapshot_t *snap);

static void read_folder(uv_work_t *w) {
    reloader_t *r = w->data;
    r->read = script_snapshot_read(r->dir, &r->read_err);
}

static void start_read(reloader_t *r);

/* On the loop: load what the work thread read, then tell everyone who waited for it. */
static void after_read(uv_work_t *w, int status) {
    reloader_t *r = w->data;
    r->reading = 0;
    char *msg = NULL;
    int rc = -1;
    if (status != 0) {
        msg = strdup(uv_strerror(status));
        script_snapshot_free(r->read);
    } else if (!r->read) {
        msg = r->read_err;
    } else {
        watch_subfolders(r, r->read); /* the folder as it is now, whether the load works */
        rc = hooks_reload_snapshot(r->ctx->hooks, r->read, &msg);
    }
    r->read = NULL;
    r->read_err = NULL;
    const char *trigger = r->current.trigger;
    snprintf(r->last_trigger, sizeof(r->last_trigger), "%s", trigger);
    metrics_observe_reload(r->ctx->metrics, rc == 0);
    if (rc == 0) {
        r->reloads++;
        r->loaded_at = util_now_wall_ns();
        free(r->last_error);
        r->last_error = NULL;
        route_log(LOG_INFO, "%s: scripts reloaded", trigger);
    } else {
        route_log(LOG_ERROR, "%s: reload failed, the running scripts stay: %s", trigger,
                  msg ? msg : "unknown error");
        free(r->last_error);
        r->last_error = msg ? strdup(msg) : NULL;
    }
    reload_batch_t done = r->current;
    r->current.n = 0;
    if (r->again) {
        r->again = 0;
        r->current = r->next;
        r->next.n = 0;
        start_read(r);
    }
    for (size_t i = 0; i < done.n; i++)
        done.w[i].cb(done.w[i].data, rc == 0, rc == 0 ? NULL : msg ? msg : "reload failed");
    free(msg);
}

static void start_read(reloader_t *r) {
    /* At shutdown the handles close: no new work then. */
    if (uv_is_closing((uv_handle_t *)&r->debounce)) {
        for (size_t i = 0; i < r->current.n; i++)
            r->current.w[i].cb(r->current.w[i].data, 0, "shutting down");
        r->current.n = 0;
        return;
    }
    r->work.data = r;
    int rc = uv_queue_work(r->ctx->loop, &r->work, read_folder, after_read);
    if (rc == 0) {
        r->reading = 1;
        return;
    }
    route_log(LOG_ERROR, "%s: reload failed: %s", r->current.trigger, uv_strerror(rc));
    for (size_t i = 0; i < r->current.n; i++)
        r->current.w[i].cb(r->current.w[i].data, 0, uv_strerror(rc));
    r->current.n = 0;
}

void reloader_request(reloader_t *r, const char *trigger, reload_done_cb cb, void *data) {
    /* While a read runs, the files may change after it began: this caller gets the result of
     * a read that starts after it asked. */
    reload_batch_t *b = r->reading ? &r->next : &r->current;
    if (cb && b->n == WAITERS_MAX) {
        r->waiters_refused++;
        route_log_limited(&r->refused_log, LOG_WARN,
                          "reload: %d callers already wait for a reload, %lu refused so far",
                          WAITERS_MAX, r->waiters_refused);
        cb(data, 0, "too many reloads waiting; try again");
        return;
    }
    if (cb) b->w[b->n++] = (reload_waiter_t){cb, data};
    snprintf(b->trigger, sizeof b->trigger, "%s", trigger);
    if (r->reading)
        r->again = 1;
    else
        start_read(r);
}

static void on_debounced(uv_timer_t *t) {
    reloader_t *r = t->data;
    reloader_request(r, "file change", NULL, NULL);
}

/* A change that may concern the scripts: a .lua file, or a name without a dot (a subfolder
 * made or renamed, whose modules get a watch once a reload read them). No name means the
 * folder itself changed: look again to be safe. */
static int may_concern_scripts(const char *filename) {
    return !filename || ends_with_lua(filename) || (filename[0] != '.' && !strchr(filename, '.'));
}

static void on_folder_event(uv_fs_event_t *w, const char *filename, int events, int status) {
    reloader_t *r = w->data;
    if (status < 0) {
        route_log(LOG_WARN, "scripts watch: %s", uv_strerror(status));
        return;
    }
    if (!may_concern_scripts(filename)) return;
    uv_timer_start(&r->debounce, on_debounced, DEBOUNCE_MS, 0);
}

/* ---------------------------------------------------------------- subfolder watches */

static void on_subwatch_closed(uv_handle_t *h) {
    subwatch_t *sw = (subwatch_t *)h;
    free(sw->rel);
    free(sw);
}

/* 1 when some file of snap lies under the subfolder rel[0..len). */
static int holds_modules(const script_snapshot_t *snap, const char *rel, size_t len) {
    for (size_t i = 0; i < snap->n_files; i++) {
        const char *name = snap->files[i].name;
        if (strncmp(name, rel, len) == 0 && name[len] == '/') return 1;
    }
    return 0;
}

static int is_watched(const reloader_t *r, const char *rel, size_t len) {
    for (size_t i = 0; i < r->n_subs; i++)
        if (strlen(r->subs[i]->rel) == len && memcmp(r->subs[i]->rel, rel, len) == 0) return 1;
    return 0;
}

static void add_subwatch(reloader_t *r, const char *rel, size_t len) {
    if (r->n_subs == SUBWATCHES_MAX) {
        route_log_limited(&r->watch_log, LOG_WARN,
                          "scripts watch: more than %d subfolders; changes in %.*s reload on "
                          "SIGHUP or POST /admin/reload only",
                          SUBWATCHES_MAX, (int)len, rel);
        return;
    }
    subwatch_t *sw = calloc(1, sizeof(*sw));
    char *path = sw ? malloc(strlen(r->dir) + 1 + len + 1) : NULL;
    if (!sw || !path || !(sw->rel = strndup(rel, len))) {
        free(path);
        free(sw);
        return;
    }
    sprintf(path, "%s/%.*s", r->dir, (int)len, rel);
    uv_fs_event_init(r->ctx->loop, &sw->handle);
    sw->handle.data = r;
    int rc = uv_fs_event_start(&sw->handle, on_folder_event, path, 0);
    free(path);
    if (rc != 0) {
        route_log_limited(&r->watch_log, LOG_WARN, "cannot watch %s/%s for script changes: %s",
                          r->dir, sw->rel, uv_strerror(rc));
        uv_close((uv_handle_t *)&sw->handle, on_subwatch_closed);
        return;
    }
    r->subs[r->n_subs++] = sw;
}

/* Watches exactly the subfolders that hold snap's modules (and the folders between). */
static void watch_subfolders(reloader_t *r, const script_snapshot_t *snap) {
    if (!r->watching || !snap || uv_is_closing((uv_handle_t *)&r->watch)) return;
    for (size_t i = 0; i < r->n_subs;) {
        subwatch_t *sw = r->subs[i];
        if (holds_modules(snap, sw->rel, strlen(sw->rel))) {
            i++;
            continue;
        }
        uv_close((uv_handle_t *)&sw->handle, on_subwatch_closed);
        r->subs[i] = r->subs[--r->n_subs];
    }
    for (size_t i = 0; i < snap->n_files; i++) {
        const char *name = snap->files[i].name;
        for (const char *slash = strchr(name, '/'); slash; slash = strchr(slash + 1, '/')) {
            size_t len = (size_t)(slash - name);
            if (!is_watched(r, name, len)) add_subwatch(r, name, len);
        }
    }
}

reloader_t *reloader_new(route_ctx_t *ctx, const char *scripts_dir) {
    reloader_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->ctx = ctx;
    r->dir = scripts_dir && *scripts_dir ? strdup(scripts_dir) : NULL;
    r->loaded_at = util_now_wall_ns();
    snprintf(r->last_trigger, sizeof(r->last_trigger), "start-up");
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
    watch_subfolders(r, hooks_loaded_snapshot(ctx->hooks));
    return r;
}

void reloader_free(reloader_t *r) {
    if (!r) return;
    /* Their handles were closed with every other at shutdown. */
    for (size_t i = 0; i < r->n_subs; i++) {
        free(r->subs[i]->rel);
        free(r->subs[i]);
    }
    free(r->dir);
    free(r->last_error);
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
    const script_snapshot_t *snap = hooks_loaded_snapshot(r->ctx->hooks);
    for (size_t i = 0; snap && i < snap->n_files; i++) {
        const script_file_t *f = &snap->files[i];
        util_format_json_time(t, sizeof(t), f->mtime_ns);
        buf_appends(out, i ? ",{\"name\":" : "{\"name\":");
        buf_append_json_string(out, f->name, strlen(f->name));
        buf_printf(out, ",\"size\":%zu,\"mtime\":\"%s\",\"sha256\":\"%s\"}", f->len, t, f->sha256);
    }
    buf_appends(out, "]}");
}
