/* cache.c: the event loop's view of the store: the config key/values and live upstreams of the
 * newest snapshot, with what this process queued and the writer has not committed yet laid
 * over them (config values by sequence, counter bumps by per-upstream sequence), and the
 * generations consumers re-derive their own views by.
 *
 * Owns: the loop's snapshot and its generations, the pending config values, the count of bumps
 * issued per upstream, the uv_async_t the writer hands snapshots over with.
 * Must not: call SQLite once the loop runs (store_attach_loop's first snapshot is read before
 * it does), wait on a lock held across a database call (queue_mu and inbox_mu guard pointer
 * swaps only), run on any thread but the loop's, or log a key, a token or a config value. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/util.h"
#include "store_internal.h"

void store_config_item_free(config_item_t *it) {
    if (!it) return;
    free(it->key);
    free(it->value);
    free(it);
}

void store_cache_free(store_t *s) {
    store_kv_list_free(&s->config);
    store_upstream_list_free(&s->upstreams);
    while (s->pending) {
        config_item_t *p = s->pending;
        s->pending = p->next;
        store_config_item_free(p);
    }
    store_bump_free(&s->issued);
}

/* ---- reading ---- */

const char *store_loop_config(store_t *s, const char *key) {
    for (size_t i = 0; i < s->config.n; i++)
        if (strcmp(s->config.items[i].key, key) == 0) return s->config.items[i].value;
    return NULL;
}

const store_upstream_list_t *store_loop_upstreams(store_t *s) {
    return &s->upstreams;
}

uint64_t store_loop_config_generation(const store_t *s) {
    return s->config_generation;
}

uint64_t store_loop_upstreams_generation(const store_t *s) {
    return s->upstreams_generation;
}

/* ---- installing a snapshot ---- */

static const char *kv_find(const kv_list_t *l, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0) return l->items[i].value;
    return NULL;
}

/* Appends to out (", "-separated) the keys whose value differs between a and b. Returns
 * whether any did. */
static int config_diff(const kv_list_t *a, const kv_list_t *b, char *out, size_t cap) {
    int changed = 0;
    size_t len = strlen(out);
    for (int pass = 0; pass < 2; pass++) {
        const kv_list_t *x = pass ? b : a, *y = pass ? a : b;
        for (size_t i = 0; i < x->n; i++) {
            const char *other = kv_find(y, x->items[i].key);
            /* Each changed key once: a key in both is reported by the first pass. */
            if (other && (pass || strcmp(other, x->items[i].value) == 0)) continue;
            changed = 1;
            int n = snprintf(out + len, cap - len, "%s%s", len ? ", " : "", x->items[i].key);
            if (n > 0 && (size_t)n < cap - len) len += (size_t)n;
        }
    }
    return changed;
}

/* The set of upstreams or an sk/endpoint differs; counters do not count. */
static int upstreams_differ(const store_upstream_list_t *a, const store_upstream_list_t *b) {
    if (a->n != b->n) return 1;
    for (size_t i = 0; i < a->n; i++) {
        const store_upstream_t *x = &a->items[i], *y = &b->items[i];
        if (x->id != y->id || strcmp(x->sk, y->sk) || strcmp(x->endpoint, y->endpoint)) return 1;
    }
    return 0;
}

/* The snapshot's counters are as committed when it was read; the bumps issued here since
 * (sequence above the committed one) are still queued or in the writer's open batch. */
static void overlay_bumps(store_t *s, store_snapshot_t *snap) {
    for (size_t i = 0; i < snap->upstreams.n; i++) {
        store_upstream_t *u = &snap->upstreams.items[i];
        const bump_t *issued = store_bump_find(&s->issued, u->id);
        if (!issued) continue;
        const bump_t *done = store_bump_find(&snap->committed, u->id);
        int64_t success_done = done ? done->success : 0, failed_done = done ? done->failed : 0;
        u->success_count += issued->success - success_done;
        u->failed_count += issued->failed - failed_done;
        if (issued->success > success_done && issued->last_success_at > u->last_call_success_time) {
            u->last_call_success_time = issued->last_success_at;
            u->has_last_success = 1;
        }
    }
}

static void overlay_config(store_t *s, store_snapshot_t *snap) {
    for (config_item_t **pp = &s->pending, *p; (p = *pp);) {
        if (p->seq <= snap->config_seq) {
            *pp = p->next;
            store_config_item_free(p);
            continue;
        }
        if (store_kv_set(&snap->config, p->key, p->value))
            route_log(LOG_ERROR, "store: out of memory, config key %s shows its old value", p->key);
        pp = &p->next;
    }
}

void store_loop_apply(store_t *s, store_snapshot_t *snap) {
    if (!snap) return;
    /* An older read (the poller's, overtaken by an admin call's) would undo a newer one. */
    if (snap->epoch <= s->installed_epoch) {
        store_snapshot_free(snap);
        return;
    }
    overlay_config(s, snap);
    overlay_bumps(s, snap);
    char keys[512] = "";
    int config_changed = config_diff(&s->config, &snap->config, keys, sizeof keys);
    int upstreams_changed = upstreams_differ(&s->upstreams, &snap->upstreams);
    if (snap->from_poller && (config_changed || upstreams_changed))
        route_log(LOG_INFO, "store: the database changed: %s%s%s", config_changed ? "config " : "",
                  keys, upstreams_changed ? (config_changed ? "; upstreams" : "upstreams") : "");

    kv_list_t old_config = s->config;
    store_upstream_list_t old_upstreams = s->upstreams;
    s->config = snap->config;
    s->upstreams = snap->upstreams;
    snap->config = old_config;
    snap->upstreams = old_upstreams;
    s->installed_epoch = snap->epoch;
    if (config_changed) s->config_generation++;
    if (upstreams_changed) s->upstreams_generation++;
    store_snapshot_free(snap);
}

static void on_snapshot(uv_async_t *a) {
    store_t *s = a->data;
    pthread_mutex_lock(&s->inbox_mu);
    store_snapshot_t *snap = s->inbox;
    s->inbox = NULL;
    pthread_mutex_unlock(&s->inbox_mu);
    store_loop_apply(s, snap);
}

int store_attach_loop(store_t *s, uv_loop_t *loop) {
    if (s->async_open) return 0;
    int rc = uv_async_init(loop, &s->async, on_snapshot);
    if (rc) return rc;
    s->async.data = s;
    uv_unref((uv_handle_t *)&s->async);
    s->async_open = 1;
    /* Whatever was written since store_open (a first-start token, say) is in place before the
     * first request. */
    store_loop_apply(s, store_snapshot_read(s));
    pthread_mutex_lock(&s->inbox_mu);
    s->attached = 1;
    pthread_mutex_unlock(&s->inbox_mu);
    store_writer_set_polling(s, 1);
    return 0;
}

void store_detach_loop(store_t *s) {
    if (!s) return;
    store_writer_set_polling(s, 0);
    pthread_mutex_lock(&s->inbox_mu);
    s->attached = 0;
    store_snapshot_t *late = s->inbox;
    s->inbox = NULL;
    pthread_mutex_unlock(&s->inbox_mu);
    store_snapshot_free(late);
    if (s->async_open) {
        s->async_open = 0;
        if (!uv_is_closing((uv_handle_t *)&s->async)) uv_close((uv_handle_t *)&s->async, NULL);
    }
}

/* ---- in-process changes ---- */

static config_item_t *config_item(const char *key, const char *value, uint64_t seq, int64_t at) {
    config_item_t *it = calloc(1, sizeof *it);
    if (!it) return NULL;
    it->at = at;
    it->seq = seq;
    it->key = strdup(key);
    it->value = strdup(value);
    if (it->key && it->value) return it;
    store_config_item_free(it);
    return NULL;
}

int store_loop_config_set(store_t *s, const char *key, const char *value, const char **why) {
    size_t key_len = strlen(key), value_len = strlen(value);
    if (key_len == 0 || key_len > STORE_CONFIG_KEY_MAX || value_len > STORE_CONFIG_VALUE_MAX) {
        *why = key_len == 0                     ? "empty key"
               : key_len > STORE_CONFIG_KEY_MAX ? "key too long"
                                                : "value too long";
        return -1;
    }
    const char *old = store_loop_config(s, key);
    /* config_kvs is a settings table, not a data store: a script that set a new key on every
     * request would grow it, the cache and every snapshot without end. */
    if (!old && s->config.n >= STORE_CONFIG_KEYS_MAX) {
        *why = "too many config keys";
        return -1;
    }
    uint64_t seq = s->config_seq + 1;
    int64_t at = util_now_wall_ns();
    int changed = !old || strcmp(old, value) != 0;
    config_item_t *it = config_item(key, value, seq, at), *p = config_item(key, value, seq, at);
    if (!it || !p || store_kv_set(&s->config, key, value)) {
        route_log(LOG_ERROR, "store: out of memory, config key %s not set", key);
        store_config_item_free(it);
        store_config_item_free(p);
        *why = "out of memory";
        return -1;
    }
    s->config_seq = seq;
    /* At most one pending value per key, the newest, so the order of re-applying is moot. */
    for (config_item_t **pp = &s->pending, *o; (o = *pp);) {
        if (strcmp(o->key, key) == 0) {
            *pp = o->next;
            store_config_item_free(o);
        } else {
            pp = &o->next;
        }
    }
    p->next = s->pending;
    s->pending = p;
    if (changed) s->config_generation++;
    store_writer_enqueue_config(s, it);
    return 0;
}

void store_loop_record(store_t *s, store_record_t *r) {
    if (r) store_writer_enqueue_record(s, r);
}

void store_loop_upstream_result(store_t *s, int64_t upstream_id, int success) {
    int64_t at = util_now_wall_ns();
    bump_t *issued = store_bump_get(&s->issued, upstream_id);
    if (!issued || store_writer_fold(s, upstream_id, success, at)) {
        route_log(LOG_ERROR, "store: out of memory, counter of upstream %lld not updated",
                  (long long)upstream_id);
        return;
    }
    /* The next pick must see this result now, not after the writer's commit: round_robin
     * would otherwise send back-to-back requests to the same upstream. */
    if (success) {
        issued->success++;
        issued->last_success_at = at;
    } else {
        issued->failed++;
    }
    for (size_t i = 0; i < s->upstreams.n; i++) {
        store_upstream_t *u = &s->upstreams.items[i];
        if (u->id != upstream_id) continue;
        if (success) {
            u->success_count++;
            u->last_call_success_time = at;
            u->has_last_success = 1;
        } else {
            u->failed_count++;
        }
    }
}
