/* store.h: the SQLite database the Go program wrote (openai_upstreams, config_kvs, records),
 * its schema and migrations, a cached view for the event loop, and the writer thread.
 *
 * Threading: store_open/close and the store_cli_* / store_admin_* calls are synchronous and
 * may block (CLI, start-up, or a libuv work thread). The store_loop_* calls run on the event
 * loop thread: they only read caches (refreshed by one cheap `PRAGMA data_version` check) or
 * queue work for the writer thread, never wait on a write. */
#ifndef ROUTE_STORE_H
#define ROUTE_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct store store_t;

enum { STORE_OK = 0, STORE_ERROR = -1, STORE_EXISTS = -2, STORE_NOT_FOUND = -3 };

typedef struct store_upstream {
    int64_t id;
    int64_t created_at, updated_at; /* wall ns */
    char *sk, *endpoint;
    int64_t success_count, failed_count;
    int64_t last_call_success_time; /* wall ns; 0 when never (NULL or Go zero time) */
    int has_last_success;
} store_upstream_t;

typedef struct store_upstream_list {
    store_upstream_t *items;
    size_t n;
} store_upstream_list_t;
void store_upstream_list_free(store_upstream_list_t *l);

/* One row of `records`. Strings are malloc'd and owned by the record; NULL means empty. */
typedef struct store_record {
    char id[37];
    int64_t created_at; /* wall ns */
    char *ip, *body, *response, *model, *upstream_endpoint, *user_agent, *error;
    size_t body_len, response_len;
    int64_t elapsed_ns, response_time_ns;
    int status;
    int64_t upstream_id; /* 0: none */
    int64_t prompt_tokens, completion_tokens, total_tokens;
} store_record_t;
store_record_t *store_record_new(void);
void store_record_free(store_record_t *r);

/* Opens (creating the file and schema, or migrating an older one by ADD COLUMN), sets WAL,
 * and starts the writer thread. On error returns NULL and a malloc'd message in *err. */
store_t *store_open(const char *path, char **err);
/* Writes every queued item, stops the writer thread, closes. */
void store_close(store_t *s);

/* ---- synchronous calls (CLI, start-up, admin work threads) ---- */
/* -add: STORE_OK (new or revived soft-deleted pair, *id set), STORE_EXISTS (live pair). */
int store_add_upstream(store_t *s, const char *sk, const char *endpoint, int64_t *id);
/* NULL sk/endpoint keeps that field. STORE_NOT_FOUND, STORE_EXISTS (pair taken). */
int store_update_upstream(store_t *s, int64_t id, const char *sk, const char *endpoint);
int store_delete_upstream(store_t *s, int64_t id);
int store_list_upstreams(store_t *s, store_upstream_list_t *out);
/* Returns a malloc'd value or NULL when the key is missing (or deleted). */
char *store_config_get(store_t *s, const char *key);
int store_config_set(store_t *s, const char *key, const char *value);
/* Calls fn for each live config key, ordered by key. */
int store_config_each(store_t *s, void (*fn)(void *ud, const char *key, const char *value),
                      void *ud);
/* Newest first. Fills out[] (caller frees with store_record_free each). */
int store_list_records(store_t *s, int limit, int offset, store_record_t ***out, size_t *n);

/* ---- event loop thread ---- */
/* Re-reads config and upstreams when another connection (the writer thread, a CLI -set, an
 * admin call) committed since the last check. Cheap when nothing changed. */
void store_loop_refresh(store_t *s);
/* Cached config value or NULL. Valid until the next store_loop_refresh/config_set. */
const char *store_loop_config(store_t *s, const char *key);
/* Cached live upstreams, ordered by id. Valid until the next store_loop_refresh. */
const store_upstream_list_t *store_loop_upstreams(store_t *s);
/* Change counters of the loop's cache: config_generation moves whenever a cached config value
 * changed (in-process set or another process's write); upstreams_generation whenever the set
 * of upstreams or an sk/endpoint changed (not on counter bumps: read the counts from
 * store_loop_upstreams, which are always current). Consumers re-derive their own views
 * (typed config, Lua tables) only when these move. */
uint64_t store_loop_config_generation(const store_t *s);
uint64_t store_loop_upstreams_generation(const store_t *s);
/* Updates the cache now and queues the write. */
void store_loop_config_set(store_t *s, const char *key, const char *value);
/* Queues a row; takes ownership of r. */
void store_loop_record(store_t *s, store_record_t *r);
/* Queues success_count+1 & last_call_success_time=now, or failed_count+1. */
void store_loop_upstream_result(store_t *s, int64_t upstream_id, int success);

#endif
