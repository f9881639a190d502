/* script_snapshot.h: the scripts folder read into memory, so that loading Lua on the loop
 * thread never reads a file. A reload reads the folder on a work thread (reload.c), then the
 * loop loads route.lua and every helper the scripts require from these bytes (hooks_load.c). */
#ifndef ROUTE_SCRIPT_SNAPSHOT_H
#define ROUTE_SCRIPT_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

/* Bounds: a scripts folder is operator code, a few files; anything larger is a mistake
 * (a data folder pointed at by -scripts) and is refused with a message, not read. */
#define SCRIPT_SNAPSHOT_MAX_FILES 256
#define SCRIPT_SNAPSHOT_MAX_BYTES ((size_t)16 << 20)
#define SCRIPT_SNAPSHOT_MAX_DEPTH 4

typedef struct script_file {
    char *name; /* relative to the folder, '/'-separated: "route.lua", "lib/util.lua" */
    char *text;
    size_t len;
    int64_t mtime_ns;
    char sha256[65];
} script_file_t;

typedef struct script_snapshot {
    char *dir;            /* NULL: no folder (embedded hooks only) */
    script_file_t *files; /* sorted by name */
    size_t n_files;
} script_snapshot_t;

/* Reads every *.lua under dir (subfolders to SCRIPT_SNAPSHOT_MAX_DEPTH). A missing folder is
 * an empty snapshot, not an error. NULL with *err (malloc'd) when a file cannot be read or a
 * bound is passed. Blocking: start-up, the CLI, or a work thread. */
script_snapshot_t *script_snapshot_read(const char *dir, char **err);
void script_snapshot_free(script_snapshot_t *s);

/* The file of that relative name, or NULL. */
const script_file_t *script_snapshot_find(const script_snapshot_t *s, const char *name);

#endif
