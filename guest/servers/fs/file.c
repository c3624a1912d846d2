/* file.c: the fs server's open-file table. A handle is an index into `files` plus one,
 * valid only for the connection (badge) that opened it. The lock state of a file is
 * derived from the levels of its open handles (lock.c). When a connection closes (its
 * client closed it or ended), the kernel tells the server (ub_ipc.h UB_IPC_CLOSED) and
 * the connection's handles, and so its locks, are dropped (requests.c, not_a_request).
 */
#include "fs.h"

struct file files[NFILE];

/* The open file `handle` names, if the connection `badge` opened it; else NULL. */
struct file *file_of(long badge, long handle)
{
    if (handle < 1 || handle > NFILE)
        return 0;
    struct file *f = &files[handle - 1];
    return f->used && f->badge == badge ? f : 0;
}

/* Does any handle, of any connection, name inode inum? */
int is_open(uint32_t inum)
{
    for (int i = 0; i < NFILE; i++)
        if (files[i].used && files[i].inum == inum)
            return 1;
    return 0;
}

/* The index of a free entry; -1 when the table is full. */
int file_slot(void)
{
    for (int i = 0; i < NFILE; i++)
        if (!files[i].used)
            return i;
    return -1;
}
