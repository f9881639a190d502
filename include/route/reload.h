/* reload.h: when the scripts load again, and what an operator can see of it. Triggers:
 * SIGHUP (main.c), POST /admin/reload (admin.c) and a change of any .lua file in the scripts
 * folder (watched here, debounced so an editor's save sequence loads once). */
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

/* Loads the scripts again now. trigger names the cause for the log and /admin/scripts.
 * 0, or -1 with *err (malloc'd "file:line: message"); the running hooks stay then. */
int reloader_reload(reloader_t *r, const char *trigger, char **err);

/* GET /admin/scripts: {"folder","watching","loaded_at","last_trigger","reloads",
 * "last_error","files":[{"name","size","mtime","sha256"}]} */
void reloader_status_json(const reloader_t *r, buf_t *out);

#endif
