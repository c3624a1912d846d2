/* ubvfs.c: SQLite's operating-system layer inside underbridge: a VFS over IPC.
 *
 * SQLite is built with SQLITE_OS_OTHER=1, so it has no OS layer of its own and calls
 * sqlite3_os_init() below, which registers this VFS as the default. Every file
 * operation is one or more IPC calls to the file-system server (protocol: ub_fs.h);
 * data moves through the connection's shared buffer, at most UB_IPC_BUFFER_SIZE bytes
 * per call. Nothing here touches a Linux file syscall: musl serves only memory, stdio
 * and exit (kernel/linux_abi.py).
 *
 * Semantics kept from SQLite's unix VFS where SQLite depends on them:
 *  - a short read zero-fills the rest of the buffer and returns SQLITE_IOERR_SHORT_READ;
 *  - xAccess(SQLITE_ACCESS_EXISTS) says "no" for an empty file (a hot-journal check);
 *  - an EXCLUSIVE lock is reached through PENDING, which the VFS keeps if EXCLUSIVE is
 *    refused, so new readers stay out while the writer waits.
 * Determinism: xRandomness is a fixed xorshift stream and xCurrentTime the simulated
 * clock, so the same workload gives the same database bytes every run.
 * Durability: SQLite keeps its defaults, a rollback journal (journal_mode DELETE) and
 * synchronous FULL; xSync is FS_SYNC, which the fs server answers once every change is
 * on the device. A server that dies under a request: fs_lost.
 */
#include <string.h>
#include <time.h>

#include "sqlite3.h"
#include "ub.h"
#include "ub_fs.h"
#include "ub_ipc.h"
#include "ub_sys.h"

struct ubfile {
    sqlite3_file base; /* first: SQLite casts between the two */
    long handle;
    int lock;
    int delete_on_close;
    char name[FS_NAME_MAX + 1];
};

static struct ub_conn fs_conn;
static int fs_connected;

/* The fs connection, made on first use (sqlite3_os_init runs before any server
 * question matters, and a missing server is then an ordinary open error). */
static const struct ub_conn *fs(void)
{
    if (!fs_connected && ub_ipc_connect(FS_SERVICE, &fs_conn) == 0)
        fs_connected = 1;
    return fs_connected ? &fs_conn : NULL;
}

/* A request by name (DELETE, ACCESS: idempotent) sent again, to the server that took
 * over, on a connection of its own: fs_conn stays the dead one (see fs_lost). */
static long fs_named_again(long mr[4])
{
    struct ub_conn fresh;
    long r = ub_ipc_connect_when_up(FS_SERVICE, &fresh);

    if (r < 0)
        return -FS_EIO;
    memcpy(fresh.buf, fs_conn.buf, FS_NAME_MAX + 2); /* the name, as fs_named_call put it */
    r = ub_ipc_call(&fresh, mr);
    ub_cap_delete(fresh.slot);
    return r < 0 ? -FS_EIO : mr[0];
}

/* IPC failed under request mr with r; -UB_EPIPE: the fs server died (its supervisor
 * restarts it). Out of line, so a successful call costs what it did before.
 *
 * Every handle SQLite holds died with the server, and must never reach the new one,
 * where the same number (a slot) may name another file. So fs_conn stays the dead
 * connection, on which every call fails at once, until SQLite opens a file again:
 *  - CLOSE and UNLOCK are done: the handle and its locks died with the server;
 *  - DELETE and ACCESS name a file and are idempotent: sent again on a connection of
 *    their own; a DELETE that now finds no file was done by the lost one (the
 *    journal's DELETE is SQLite's commit point: its outcome must be known, not guessed);
 *  - OPEN reconnects fs_conn to the new server but fails (-FS_EIO): SQLite fails the
 *    statement, and a program that opens the database again (ycsb_crash.c closes it
 *    first) gets a fresh handle on the new connection. SQLite opens nothing else while
 *    it fails a statement, so no old handle is used after the reconnect but to close;
 *    there the new server refuses it (EBADF: not this connection's);
 *  - anything else fails (-FS_EIO). */
__attribute__((noinline, cold)) static long fs_lost(long mr[4], long r)
{
    long op = mr[0];

    if (r != -UB_EPIPE)
        return -FS_EIO;
    if (op == FS_CLOSE || op == FS_UNLOCK)
        return 0;
    if (op == FS_OPEN) {
        ub_ipc_reconnect(&fs_conn);
        return -FS_EIO;
    }
    if (op != FS_DELETE && op != FS_ACCESS)
        return -FS_EIO;
    r = fs_named_again(mr);
    return op == FS_DELETE && r == -FS_ENOENT ? 0 : r;
}

/* One fs call; returns reply mr[0] (0 or -FS_Exxx), or -FS_EIO if IPC itself failed
 * (fs_lost: what a dead server means for each request). */
static long fs_call(long mr[4])
{
    const struct ub_conn *conn = fs();
    if (conn == NULL)
        return -FS_EIO;
    long r = ub_ipc_call(conn, mr);
    if (r < 0)
        return fs_lost(mr, r);
    return mr[0];
}

/* Skip the leading '/' of SQLite's full path names; the fs has one flat directory. */
static const char *base_name(const char *path)
{
    return path[0] == '/' ? path + 1 : path;
}

/* An fs call that names a file: the name goes into the shared buffer. */
static long fs_named_call(long op, long arg, const char *path, long mr[4])
{
    const struct ub_conn *conn = fs();
    const char *name = base_name(path);
    size_t len = strlen(name);

    if (conn == NULL)
        return -FS_EIO;
    if (len > FS_NAME_MAX)
        return -FS_ENAMETOOLONG;
    memcpy(conn->buf, name, len + 1);
    mr[0] = op;
    mr[1] = arg;
    mr[2] = mr[3] = 0;
    return fs_call(mr);
}

/* ---- the file methods ------------------------------------------------------------- */

static int ub_close(sqlite3_file *file)
{
    struct ubfile *f = (struct ubfile *)file;
    long mr[4] = {FS_CLOSE, f->handle, 0, 0};
    int rc = fs_call(mr) == 0 ? SQLITE_OK : SQLITE_IOERR_CLOSE;

    if (f->delete_on_close) {
        long del[4];
        fs_named_call(FS_DELETE, 0, f->name, del);
    }
    return rc;
}

static int ub_read(sqlite3_file *file, void *out, int amount, sqlite3_int64 offset)
{
    struct ubfile *f = (struct ubfile *)file;
    unsigned char *dst = out;
    long done = 0;

    while (done < amount) {
        long chunk = amount - done;
        if (chunk > UB_IPC_BUFFER_SIZE)
            chunk = UB_IPC_BUFFER_SIZE;
        long mr[4] = {FS_READ, f->handle, (long)offset + done, chunk};
        if (fs_call(mr) != 0)
            return SQLITE_IOERR_READ;
        long got = mr[1];
        if (got < 0 || got > chunk)
            return SQLITE_IOERR_READ;
        memcpy(dst + done, fs_conn.buf, (size_t)got);
        done += got;
        if (got < chunk) {
            memset(dst + done, 0, (size_t)(amount - done));
            return SQLITE_IOERR_SHORT_READ;
        }
    }
    return SQLITE_OK;
}

static int ub_write_file(sqlite3_file *file, const void *in, int amount, sqlite3_int64 offset)
{
    struct ubfile *f = (struct ubfile *)file;
    const unsigned char *src = in;
    long done = 0;

    while (done < amount) {
        long chunk = amount - done;
        if (chunk > UB_IPC_BUFFER_SIZE)
            chunk = UB_IPC_BUFFER_SIZE;
        memcpy(fs_conn.buf, src + done, (size_t)chunk);
        long mr[4] = {FS_WRITE, f->handle, (long)offset + done, chunk};
        long rc = fs_call(mr);
        if (rc == -FS_ENOSPC || rc == -FS_EFBIG)
            return SQLITE_FULL;
        if (rc != 0 || mr[1] != chunk)
            return SQLITE_IOERR_WRITE;
        done += chunk;
    }
    return SQLITE_OK;
}

static int ub_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    long mr[4] = {FS_TRUNCATE, ((struct ubfile *)file)->handle, (long)size, 0};
    return fs_call(mr) == 0 ? SQLITE_OK : SQLITE_IOERR_TRUNCATE;
}

static int ub_sync(sqlite3_file *file, int flags)
{
    (void)flags;
    long mr[4] = {FS_SYNC, ((struct ubfile *)file)->handle, 0, 0};
    return fs_call(mr) == 0 ? SQLITE_OK : SQLITE_IOERR_FSYNC;
}

static int ub_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    long mr[4] = {FS_SIZE, ((struct ubfile *)file)->handle, 0, 0};
    if (fs_call(mr) != 0)
        return SQLITE_IOERR_FSTAT;
    *size = mr[1];
    return SQLITE_OK;
}

/* Ask the server for `level`; SQLITE_BUSY if another handle is in the way. */
static int lock_to(struct ubfile *f, int level)
{
    long mr[4] = {FS_LOCK, f->handle, level, 0};
    long rc = fs_call(mr);
    if (rc == -FS_EBUSY)
        return SQLITE_BUSY;
    if (rc != 0)
        return SQLITE_IOERR_LOCK;
    f->lock = level;
    return SQLITE_OK;
}

static int ub_lock(sqlite3_file *file, int level)
{
    struct ubfile *f = (struct ubfile *)file;

    if (f->lock >= level)
        return SQLITE_OK;
    if (level == SQLITE_LOCK_EXCLUSIVE && f->lock < SQLITE_LOCK_PENDING) {
        int rc = lock_to(f, SQLITE_LOCK_PENDING);
        if (rc != SQLITE_OK)
            return rc;
    }
    return lock_to(f, level);
}

static int ub_unlock(sqlite3_file *file, int level)
{
    struct ubfile *f = (struct ubfile *)file;

    if (f->lock <= level)
        return SQLITE_OK;
    long mr[4] = {FS_UNLOCK, f->handle, level, 0};
    if (fs_call(mr) != 0)
        return SQLITE_IOERR_UNLOCK;
    f->lock = level;
    return SQLITE_OK;
}

static int ub_check_reserved(sqlite3_file *file, int *reserved)
{
    long mr[4] = {FS_CHECK_RESERVED, ((struct ubfile *)file)->handle, 0, 0};
    if (fs_call(mr) != 0)
        return SQLITE_IOERR_CHECKRESERVEDLOCK;
    *reserved = mr[1] != 0;
    return SQLITE_OK;
}

static int ub_file_control(sqlite3_file *file, int op, void *arg)
{
    (void)file, (void)op, (void)arg;
    return SQLITE_NOTFOUND;
}

static int ub_sector_size(sqlite3_file *file)
{
    (void)file;
    return 4096; /* the block size of the device below the fs */
}

static int ub_device_characteristics(sqlite3_file *file)
{
    (void)file;
    return 0; /* promise nothing: SQLite keeps its full journaling */
}

static const sqlite3_io_methods ub_io_methods = {
    .iVersion = 1,
    .xClose = ub_close,
    .xRead = ub_read,
    .xWrite = ub_write_file,
    .xTruncate = ub_truncate,
    .xSync = ub_sync,
    .xFileSize = ub_file_size,
    .xLock = ub_lock,
    .xUnlock = ub_unlock,
    .xCheckReservedLock = ub_check_reserved,
    .xFileControl = ub_file_control,
    .xSectorSize = ub_sector_size,
    .xDeviceCharacteristics = ub_device_characteristics,
};

/* ---- the VFS methods --------------------------------------------------------------- */

static int ub_open(sqlite3_vfs *vfs, const char *path, sqlite3_file *file, int flags,
                   int *out_flags)
{
    static unsigned temp_serial;
    struct ubfile *f = (struct ubfile *)file;
    char temp_name[32];
    long mr[4];
    long fs_flags = 0;

    (void)vfs;
    memset(f, 0, sizeof *f);
    if (path == NULL) { /* a temporary file SQLite deletes itself, by name */
        sqlite3_snprintf(sizeof temp_name, temp_name, "etilqs_%u", ++temp_serial);
        path = temp_name;
        f->delete_on_close = 1;
        flags |= SQLITE_OPEN_CREATE | SQLITE_OPEN_EXCLUSIVE;
    }
    if (flags & SQLITE_OPEN_DELETEONCLOSE)
        f->delete_on_close = 1;
    if (flags & SQLITE_OPEN_CREATE)
        fs_flags |= FS_O_CREATE;
    if (flags & SQLITE_OPEN_EXCLUSIVE)
        fs_flags |= FS_O_EXCL;
    long rc = fs_named_call(FS_OPEN, fs_flags, path, mr);
    if (rc != 0)
        return SQLITE_CANTOPEN;
    strncpy(f->name, base_name(path), FS_NAME_MAX);
    f->handle = mr[1];
    f->base.pMethods = &ub_io_methods;
    if (out_flags)
        *out_flags = flags;
    return SQLITE_OK;
}

static int ub_delete(sqlite3_vfs *vfs, const char *path, int sync_dir)
{
    long mr[4];
    (void)vfs, (void)sync_dir; /* every fs change is durable before its reply */
    long rc = fs_named_call(FS_DELETE, 0, path, mr);
    if (rc == -FS_ENOENT)
        return SQLITE_IOERR_DELETE_NOENT;
    return rc == 0 ? SQLITE_OK : SQLITE_IOERR_DELETE;
}

static int ub_access(sqlite3_vfs *vfs, const char *path, int flags, int *result)
{
    long mr[4];
    (void)vfs;
    long rc = fs_named_call(FS_ACCESS, 0, path, mr);
    if (rc != 0 && rc != -FS_ENOENT && rc != -FS_ENAMETOOLONG)
        return SQLITE_IOERR_ACCESS;
    int exists = rc == 0 && mr[1];
    /* Like the unix VFS: an empty file does not "exist" (so it is no hot journal). */
    *result = flags == SQLITE_ACCESS_EXISTS ? exists && mr[2] > 0 : exists;
    return SQLITE_OK;
}

static int ub_full_pathname(sqlite3_vfs *vfs, const char *path, int size, char *out)
{
    (void)vfs;
    sqlite3_snprintf(size, out, "/%s", base_name(path));
    return SQLITE_OK;
}

static int ub_randomness(sqlite3_vfs *vfs, int size, char *out)
{
    static unsigned long long state = 0x9E3779B97F4A7C15ull;
    (void)vfs;
    for (int i = 0; i < size; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out[i] = (char)state;
    }
    return size;
}

static int ub_sleep(sqlite3_vfs *vfs, int microseconds)
{
    (void)vfs;
    return microseconds; /* one process, nobody to wait for: a busy retry goes on at once */
}

static int ub_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *ms)
{
    struct timespec now;
    (void)vfs;
    clock_gettime(CLOCK_REALTIME, &now); /* the simulated clock (kernel/linux_abi.py) */
    *ms = 210866760000000ll + (sqlite3_int64)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    return SQLITE_OK;
}

static int ub_current_time(sqlite3_vfs *vfs, double *julian_day)
{
    sqlite3_int64 ms;
    ub_current_time_int64(vfs, &ms);
    *julian_day = ms / 86400000.0;
    return SQLITE_OK;
}

static int ub_get_last_error(sqlite3_vfs *vfs, int size, char *out)
{
    (void)vfs, (void)size, (void)out;
    return 0;
}

static sqlite3_vfs ub_vfs = {
    .iVersion = 2,
    .szOsFile = sizeof(struct ubfile),
    .mxPathname = FS_NAME_MAX + 1,
    .zName = "underbridge",
    .xOpen = ub_open,
    .xDelete = ub_delete,
    .xAccess = ub_access,
    .xFullPathname = ub_full_pathname,
    .xRandomness = ub_randomness,
    .xSleep = ub_sleep,
    .xCurrentTime = ub_current_time,
    .xGetLastError = ub_get_last_error,
    .xCurrentTimeInt64 = ub_current_time_int64,
};

int sqlite3_os_init(void)
{
    return sqlite3_vfs_register(&ub_vfs, 1);
}

int sqlite3_os_end(void)
{
    return SQLITE_OK;
}
