/* reload.h: when the scripts load again, and what an operator can see of it. Triggers:
 * SIGHUP (main.c), POST /admin/reload (admin.c) and a change of any .lua file in the scripts
 * folder or the subfolders its modules are in (watched here, debounced so an editor's save
 * sequence loads once). */
#ifndef ROUTE_RELOAD_H
#define ROUTE_RELOAD_H

#include "route/ctx.h"
#include "route/util.h"

typedef struct reloader reloader_t;

/* Records the state of the scripts loaded at start-up and watches the folder (when it
 * exists). Never fails the start: without a watch, the other triggers still work. */
reloader_t *reloader_new(route_ctx_t *ctx, const char *scripts_dir);
/* After the loop ended (its handles are closed by then, as every handle at shutdown). */
void reloader_free(reloader_t *r);

/* Loads the scripts again: the folder is read on a work thread, then loaded on the loop.
 * trigger names the cause for the log and /admin/scripts. cb (may be NULL) is called once,
 * on the loop, with ok=1, or ok=0 and the error ("file:line: message"; valid during the
 * call); the running hooks stay after a failure. A request made while a read runs gets the
 * result of a read that starts after it (the files may have changed meanwhile). */
typedef void (*reload_done_cb)(void *data, int ok, const char *err);
void reloader_request(reloader_t *r, const char *trigger, reload_done_cb cb, void *data);

/* GET /admin/scripts: {"folder","watching","loaded_at","last_trigger","reloads",
 * "last_error","files":[{"name","size","mtime","sha256"}]} */
void reloader_status_json(const reloader_t *r, buf_t *out);

#endif
