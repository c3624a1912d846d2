/* ub_fs.h: the file-system protocol (served by guest/servers/fs), what SQLite's VFS
 * needs and no more: one flat directory of regular files.
 *
 * Names travel in the connection's shared buffer, NUL-terminated, at most FS_NAME_MAX
 * bytes before the NUL; a leading '/' is ignored and no other '/' is allowed. File data
 * travels in the shared buffer too, at most UB_IPC_BUFFER_SIZE bytes per call.
 *
 * A handle is valid only on the connection that opened it (the server checks the
 * caller's badge): handles are capabilities of that connection, not global numbers.
 * Request mr[0] is the operation; reply mr[0] is 0 or a negative FS_Exxx.
 *
 * Locks follow SQLite's five levels per file: any number of SHARED holders; at most one
 * RESERVED-or-above holder; PENDING stops new SHARED locks; EXCLUSIVE needs every other
 * holder gone. A request that cannot be granted at once fails with -FS_EBUSY (the
 * caller retries). Closing a handle drops its lock.
 */
#ifndef UB_FS_H
#define UB_FS_H

#include "ub_syscall.h"

#define FS_SERVICE "fs"
#define FS_NAME_MAX 59

/* {FS_OPEN, flags} name in buf -> {0, handle, size} */
#define FS_OPEN 1
#define FS_O_CREATE 1 /* create the file if missing */
#define FS_O_EXCL 2   /* with FS_O_CREATE: fail with FS_EEXIST if it exists */
/* {FS_CLOSE, handle} -> {0} */
#define FS_CLOSE 2
/* {FS_READ, handle, offset, len} -> {0, n}: n bytes at buf; n < len only at end of file */
#define FS_READ 3
/* {FS_WRITE, handle, offset, len} buf holds the data -> {0, len}; a gap reads as zeros.
 * A write that fills the device fails with FS_ENOSPC but keeps the bytes it managed to
 * store, and the file's size covers them (the reply cannot carry a count and an error). */
#define FS_WRITE 4
/* {FS_TRUNCATE, handle, size} -> {0}: the file is now `size` bytes (shrink or grow) */
#define FS_TRUNCATE 5
/* {FS_SYNC, handle} -> {0}: the file's data and metadata are durable on the device */
#define FS_SYNC 6
/* {FS_SIZE, handle} -> {0, size} */
#define FS_SIZE 7
/* {FS_DELETE} name in buf -> {0}; FS_ENOENT if missing, FS_EBUSY if open */
#define FS_DELETE 8
/* {FS_ACCESS} name in buf -> {0, exists (0 or 1), size} */
#define FS_ACCESS 9
/* {FS_LOCK, handle, level} -> {0} or FS_EBUSY; level is above the handle's current one */
#define FS_LOCK 10
/* {FS_UNLOCK, handle, level} -> {0}; level is FS_LOCK_NONE or FS_LOCK_SHARED */
#define FS_UNLOCK 11
/* {FS_CHECK_RESERVED, handle} -> {0, 1 if any handle holds RESERVED or above} */
#define FS_CHECK_RESERVED 12
/* {FS_STATFS} -> {0, total blocks (the whole device, metadata included), free blocks,
 * free inodes} */
#define FS_STATFS 13

/* lock levels, as SQLite numbers them */
#define FS_LOCK_NONE 0
#define FS_LOCK_SHARED 1
#define FS_LOCK_RESERVED 2
#define FS_LOCK_PENDING 3
#define FS_LOCK_EXCLUSIVE 4

/* errors (Linux's numbers) */
#define FS_ENOENT 2
#define FS_EIO 5
#define FS_EBADF 9
#define FS_EBUSY 16
#define FS_EEXIST 17
#define FS_EINVAL 22
#define FS_EFBIG 27
#define FS_ENOSPC 28
#define FS_ENAMETOOLONG 36
#define FS_EMFILE 24

#endif
