/* fs: the file-system server. Serves ub_fs.h over the ubfs format (ubfs.h), stored on a
 * block device reached over IPC (ub_blk.h).
 *
 * usage: fs [SERVICE [DEVICE]]   connects to DEVICE (default "blk"), mounts it (making
 * a new, empty file system if the device holds none), registers SERVICE (default "fs")
 * and serves it forever.
 *
 * Layers, bottom up, one file each in the style of xv6 (fs.h declares what they share):
 *   bio.c       the device: blk_read/blk_write, whole blocks through the block
 *               connection's buffer; and the cache: bread/brelse/bdirty, NBUF blocks,
 *               least recently used evicted first, bflush writes dirty blocks back;
 *   bitmap.c    balloc/bfree;
 *   inode.c     iget/iupdate/ialloc, bmap (file block -> disk block), itrunc, and
 *               readi/writei: whole contiguous blocks go straight between the caller's
 *               buffer and the device, partial blocks through the cache;
 *   dir.c       dirlookup/dirlink/dirunlink on the root, the only directory; names;
 *   file.c      the open-file table: handles, owners, lock levels. The server hears
 *               nothing when a connection closes, so a dead client's handles (and
 *               locks) stay until the server restarts;
 *   lock.c      SQLite's lock rules and the lock requests;
 *   mkfs.c      mounting, and making an empty file system;
 *   recover.c   crash recovery at mount: what a crash at any instruction left is made
 *               consistent again (entries, orphans, pointers past a size, the bitmap
 *               rebuilt from the pointers); a consistent device is not written;
 *   requests.c  one function per operation, THE table of them, and fs_handle(), which
 *               ends every request with bflush: every change is on the device before
 *               the reply, so the device alone holds the state and a restarted server
 *               mounts it as is;
 *   fs.c        this file: main.
 *
 * Memory: the cache, the superblock copy and the open-file table are this server's
 * alone. msg->buf is the calling connection's buffer (UB_IPC_BUFFER_SIZE bytes, shared
 * with the caller); blk.buf is ours with the block server. Every register a caller
 * sends is checked before use: handles against the table and the caller's badge,
 * offsets and lengths against the buffer and the largest file, names for length and
 * '/'. Block numbers read from the device are checked too (a pointer outside the data
 * area is corruption and fails the request with FS_EIO rather than touching metadata).
 *
 * In kernel space the handler runs on callers' threads through gates, where a syscall
 * fails with -UB_EDEADLK: request paths make no syscall but ub_ipc_call on the block
 * connection (a gate call there), and print nothing.
 *
 * One request at a time: nothing here is reentrant (the cache, the table, the block
 * buffer are shared by all requests). That holds in user space (one server thread) and
 * for applications' calls into kernel space (the kernel runs each gate call to its
 * end). An in-kernel client's thread, though, can be preempted inside the handler, and
 * a second in-kernel client could then enter it: such clients need the kernel to keep
 * a thread inside a foreign domain from being preempted, or a lock here.
 */
#include "fs.h"

int main(int argc, char **argv)
{
    const char *service = argc > 1 ? argv[1] : FS_SERVICE;
    const char *device = argc > 2 ? argv[2] : BLK_SERVICE;
    uint32_t blocks = 0;
    struct recovery fixed = {0};

    long r = ub_ipc_connect(device, &blk);
    if (r < 0) {
        ub_printf("fs: cannot connect to %s: %ld\n", device, r);
        return 1;
    }
    if (blk.buf_size < (unsigned long)BLK_MAX_BLOCKS * BSIZE) {
        ub_printf("fs: %s's buffer of %lu bytes is too small\n", device, blk.buf_size);
        return 1;
    }
    int mounted = mount(&blocks, &fixed);
    if (mounted < 0) {
        ub_printf("fs: %s (%u blocks) holds no usable file system\n", device, blocks);
        return 1;
    }
    ub_printf("fs: %s %s: %u blocks, %u inodes\n", mounted ? "mounted" : "formatted", device,
              sb.block_count, sb.inode_count);
    if (fixed.skipped)
        ub_printf("fs: the root directory is corrupt: not recovered\n");
    else if (fixed.entries | fixed.inodes | fixed.links | fixed.pointers | fixed.tails | fixed.bits)
        ub_printf("fs: recovered: %u entries, %u inodes, %u links, %u pointers, %u tails, "
                  "%u bitmap bits\n",
                  fixed.entries, fixed.inodes, fixed.links, fixed.pointers, fixed.tails, fixed.bits);
    r = ub_ipc_register(service, fs_handle);
    if (r < 0) {
        ub_printf("fs: cannot register %s: %ld\n", service, r);
        return 1;
    }
    ub_ipc_serve(r, fs_handle);
}
