/* vfs.c: the SQLite VFS every store connection opens with: the system's default VFS, with one
 * guard on the WAL's shared-memory index.
 *
 * The index (db-shm) is memory-mapped; once the file cannot be written (chattr +i, a read-only
 * remount), the first store into a mapped page that the kernel has cleaned raises SIGBUS, which
 * kills the process from whatever thread touched it (the writer, an admin work thread). SQLite
 * writes into the index only while it holds an exclusive lock on the part it writes (the write
 * lock, a read-mark slot, the checkpoint lock), and takes that lock through xShmLock first. So
 * an exclusive xShmLock fails with SQLITE_IOERR_SHMLOCK while the index file is not writable:
 * SQLite returns that error to the caller (the writer retries, an admin call fails) instead of
 * touching the mapping. Shared locks and reads pass: reading a mapped page cannot fault so.
 *
 * It also carries a connection's pacer (store_vfs_set_pacer): a call before each write to the
 * database file or its WAL, by which the writer thread offers its core during a commit or a
 * checkpoint (writer.c says why). A WAL file finds its database's pacer through
 * sqlite3_database_file_object, so a pacer set after the WAL was opened still applies.
 *
 * Owns: the VFS registration (the process's first SQLite call, with the library configuration
 * before it), the wrapped file's methods, the pacer file control.
 * Must not: change what any other call does, or cost more than an access() per exclusive lock
 * and a pointer test per write. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "route/util.h"
#include "store_internal.h"

typedef struct guarded_file {
    sqlite3_file base;
    const char *db_name; /* the main database's name (valid until xClose), NULL for others */
    struct guarded_file *database; /* a WAL's or a journal's main database file, NULL for others */
    store_pacer_t *pacer;          /* the main database's: its connection's pacer, or NULL */
    sqlite3_file *real;            /* right after this struct, in the same allocation */
} guarded_file_t;

/* Not a SQLite opcode: those are below 100. The value spells "RTPC". */
#define FCNTL_SET_PACER 0x52545043

static sqlite3_vfs guarded_vfs;
static sqlite3_vfs *real_vfs;
static sqlite3_io_methods guarded_methods;

#define REAL(f) (((guarded_file_t *)(void *)(f))->real)

static int g_close(sqlite3_file *f) {
    int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
    f->pMethods = NULL;
    return rc;
}
static int g_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off) {
    return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}
static int g_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off) {
    guarded_file_t *g = (guarded_file_t *)(void *)f;
    store_pacer_t *pacer = g->database ? g->database->pacer : g->pacer;
    if (pacer) pacer->pace(pacer->arg);
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int g_truncate(sqlite3_file *f, sqlite3_int64 size) {
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int g_sync(sqlite3_file *f, int flags) {
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int g_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int g_lock(sqlite3_file *f, int level) {
    return REAL(f)->pMethods->xLock(REAL(f), level);
}
static int g_unlock(sqlite3_file *f, int level) {
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}
static int g_check_reserved(sqlite3_file *f, int *out) {
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int g_file_control(sqlite3_file *f, int op, void *arg) {
    if (op == FCNTL_SET_PACER) {
        ((guarded_file_t *)(void *)f)->pacer = arg;
        return SQLITE_OK;
    }
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int g_sector_size(sqlite3_file *f) {
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int g_device_characteristics(sqlite3_file *f) {
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
/* The wrapper claims version 3 for every file; a real file of an older version has none of
 * the calls below (SQLite uses them on the main database only, which has them all). */
static int g_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out) {
    if (REAL(f)->pMethods->iVersion < 2) return SQLITE_IOERR_SHMMAP;
    return REAL(f)->pMethods->xShmMap(REAL(f), region, size, extend, out);
}
static int g_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
    const char *db = ((guarded_file_t *)(void *)f)->db_name;
    if (db && (flags & SQLITE_SHM_LOCK) && (flags & SQLITE_SHM_EXCLUSIVE)) {
        char shm[PATH_MAX];
        if (snprintf(shm, sizeof shm, "%s-shm", db) < (int)sizeof shm && access(shm, W_OK) != 0 &&
            errno != ENOENT)
            return SQLITE_IOERR_SHMLOCK;
    }
    if (REAL(f)->pMethods->iVersion < 2) return SQLITE_IOERR_SHMLOCK;
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}
static void g_shm_barrier(sqlite3_file *f) {
    if (REAL(f)->pMethods->iVersion >= 2) REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int g_shm_unmap(sqlite3_file *f, int delete_flag) {
    if (REAL(f)->pMethods->iVersion < 2) return SQLITE_OK;
    return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}
static int g_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out) {
    if (REAL(f)->pMethods->iVersion < 3) {
        *out = NULL;
        return SQLITE_OK;
    }
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, out);
}
static int g_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    if (REAL(f)->pMethods->iVersion < 3) return SQLITE_OK;
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static int g_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags) {
    (void)vfs;
    guarded_file_t *g = (guarded_file_t *)(void *)f;
    g->real = (sqlite3_file *)(void *)(g + 1);
    g->db_name = (flags & SQLITE_OPEN_MAIN_DB) ? name : NULL;
    g->pacer = NULL;
    /* Opened through this VFS too, by the same connection, so it is one of these. */
    g->database = name && (flags & (SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL))
                      ? (guarded_file_t *)(void *)sqlite3_database_file_object(name)
                      : NULL;
    int rc = real_vfs->xOpen(real_vfs, name, g->real, flags, out_flags);
    /* The methods are the real ones' version: 3 with shared memory and fetch, as unix has. */
    f->pMethods = g->real->pMethods ? &guarded_methods : NULL;
    return rc;
}

static void register_once(void) {
    /* The first SQLite call of the process, so the library's configuration goes here too. No
     * memory statistics: with them every SQLite allocation takes one process-wide mutex, shared
     * by the writer and the admin work threads; nothing here reads them (no soft heap limit).
     * Measured with build/tests/bench_store, 4 interleaved pairs: 77k-110k rows/s without,
     * 63k-92k with. It fails harmlessly (SQLITE_MISUSE) if SQLite was already initialized. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs) return;
    guarded_vfs = *real_vfs;
    guarded_vfs.zName = STORE_VFS_NAME;
    guarded_vfs.szOsFile = (int)sizeof(guarded_file_t) + real_vfs->szOsFile;
    guarded_vfs.pNext = NULL;
    guarded_vfs.xOpen = g_open;
    guarded_methods = (sqlite3_io_methods){
        .iVersion = 3,
        .xClose = g_close,
        .xRead = g_read,
        .xWrite = g_write,
        .xTruncate = g_truncate,
        .xSync = g_sync,
        .xFileSize = g_file_size,
        .xLock = g_lock,
        .xUnlock = g_unlock,
        .xCheckReservedLock = g_check_reserved,
        .xFileControl = g_file_control,
        .xSectorSize = g_sector_size,
        .xDeviceCharacteristics = g_device_characteristics,
        .xShmMap = g_shm_map,
        .xShmLock = g_shm_lock,
        .xShmBarrier = g_shm_barrier,
        .xShmUnmap = g_shm_unmap,
        .xFetch = g_fetch,
        .xUnfetch = g_unfetch,
    };
    sqlite3_vfs_register(&guarded_vfs, 0);
}

int store_vfs_set_pacer(sqlite3 *db, store_pacer_t *pacer) {
    return sqlite3_file_control(db, "main", FCNTL_SET_PACER, pacer);
}

const char *store_vfs(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_once);
    return real_vfs ? STORE_VFS_NAME : NULL;
}
