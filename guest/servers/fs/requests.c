/* requests.c: the fs server's requests (ub_fs.h): one function per operation but the
 * lock ones (lock.c), THE table of them by request number, and fs_handle, which ends
 * every request with bflush: every change is on the device before the reply, so the
 * device alone holds the state and a restarted server mounts it as is.
 *
 * Every register a caller sends is checked before use: handles against the open-file
 * table and the caller's badge, offsets and lengths against the buffer and the largest
 * file, names for length and '/' (get_name).
 */
#include "fs.h"

static long fs_open(struct request *rq)
{
    dname name;
    struct inode ip;
    uint64_t off;
    long flags = rq->arg[0];
    long r = get_name(rq->buf, name);
    int slot;

    if (r < 0)
        return r;
    if (flags & ~(long)(FS_O_CREATE | FS_O_EXCL))
        return -FS_EINVAL;
    if ((slot = file_slot()) < 0)
        return -FS_EMFILE;
    r = lookup(name, &ip, &off);
    if (r == 0 && (flags & FS_O_CREATE) && (flags & FS_O_EXCL))
        return -FS_EEXIST;
    if (r == -FS_ENOENT && (flags & FS_O_CREATE))
        r = create(name, &ip);
    if (r < 0)
        return r;
    files[slot] = (struct file){.used = 1, .badge = rq->badge, .inum = ip.inum};
    rq->out[0] = slot + 1;
    rq->out[1] = (long)ip.d.size;
    return 0;
}

static long fs_close(struct request *rq)
{
    struct file *f = file_of(rq->badge, rq->arg[0]);

    if (f == 0)
        return -FS_EBADF;
    f->used = 0; /* its lock goes with it */
    return 0;
}

/* The open file a request names, and its inode. */
static long open_inode(struct request *rq, struct file **fp, struct inode *ip)
{
    *fp = file_of(rq->badge, rq->arg[0]);
    if (*fp == 0)
        return -FS_EBADF;
    return iget((*fp)->inum, ip) < 0 ? -FS_EIO : 0;
}

/* The inode a READ or WRITE {handle, offset, len} names, once {offset, len} is checked
 * to be a transfer through one buffer. */
static long open_for_io(struct request *rq, struct inode *ip)
{
    struct file *f;

    if (rq->arg[1] < 0 || rq->arg[2] < 0 || rq->arg[2] > UB_IPC_BUFFER_SIZE)
        return -FS_EINVAL;
    return open_inode(rq, &f, ip);
}

static long fs_read(struct request *rq)
{
    struct inode ip;
    long offset = rq->arg[1], len = rq->arg[2];
    long r = open_for_io(rq, &ip);

    if (r < 0)
        return r;
    rq->out[0] = (long)readi(&ip, rq->buf, (uint64_t)offset, (uint64_t)len);
    return 0;
}

static long fs_write(struct request *rq)
{
    struct inode ip;
    long offset = rq->arg[1], len = rq->arg[2];
    long r = open_for_io(rq, &ip);

    if (r < 0)
        return r;
    if ((uint64_t)offset > MAXFILE_BYTES - (uint64_t)len)
        return -FS_EFBIG;
    uint64_t n = writei(&ip, rq->buf, (uint64_t)offset, (uint64_t)len);
    if (n < (uint64_t)len)
        return -FS_ENOSPC; /* the bytes before stay written (io_failed makes it EIO) */
    rq->out[0] = len;
    return 0;
}

static long fs_truncate(struct request *rq)
{
    struct file *f;
    struct inode ip;
    long size = rq->arg[1];
    long r = open_inode(rq, &f, &ip);

    if (r < 0)
        return r;
    if (size < 0)
        return -FS_EINVAL;
    if ((uint64_t)size > MAXFILE_BYTES)
        return -FS_EFBIG;
    itrunc(&ip, (uint64_t)size);
    return 0;
}

static long fs_sync(struct request *rq)
{
    if (file_of(rq->badge, rq->arg[0]) == 0)
        return -FS_EBADF;
    bflush(); /* nothing is dirty between requests; the device flush is the point */
    return blk_call(BLK_FLUSH, 0, 0) < 0 ? -FS_EIO : 0;
}

static long fs_size(struct request *rq)
{
    struct file *f;
    struct inode ip;
    long r = open_inode(rq, &f, &ip);

    if (r < 0)
        return r;
    rq->out[0] = (long)ip.d.size;
    return 0;
}

static long fs_delete(struct request *rq)
{
    dname name;
    struct inode ip;
    uint64_t off;
    long r = get_name(rq->buf, name);

    if (r < 0 || (r = lookup(name, &ip, &off)) < 0)
        return r;
    if (is_open(ip.inum))
        return -FS_EBUSY;
    dirunlink(off);
    itrunc(&ip, 0);
    memset(&ip.d, 0, sizeof ip.d); /* type FREE */
    ip.dirty = 1;
    iupdate(&ip);
    return 0;
}

static long fs_access(struct request *rq)
{
    dname name;
    struct inode ip;
    uint64_t off;
    long r = get_name(rq->buf, name);

    if (r < 0)
        return r;
    r = lookup(name, &ip, &off);
    if (r == -FS_ENOENT)
        return 0; /* out: {exists 0, size 0} */
    if (r < 0)
        return r;
    rq->out[0] = 1;
    rq->out[1] = (long)ip.d.size;
    return 0;
}

static long fs_statfs(struct request *rq)
{
    rq->out[0] = sb.block_count;
    rq->out[1] = (long)count_free_blocks();
    rq->out[2] = (long)count_free_inodes();
    return 0;
}

typedef long (*request_fn)(struct request *rq);

/* THE request table: a request number (ub_fs.h) -> its handler. */
static const request_fn requests[] = {
    [FS_OPEN] = fs_open,
    [FS_CLOSE] = fs_close,
    [FS_READ] = fs_read,
    [FS_WRITE] = fs_write,
    [FS_TRUNCATE] = fs_truncate,
    [FS_SYNC] = fs_sync,
    [FS_SIZE] = fs_size,
    [FS_DELETE] = fs_delete,
    [FS_ACCESS] = fs_access,
    [FS_LOCK] = fs_lock,
    [FS_UNLOCK] = fs_unlock,
    [FS_CHECK_RESERVED] = fs_check_reserved,
    [FS_STATFS] = fs_statfs,
};

#define NREQUESTS ((long)(sizeof requests / sizeof requests[0]))

/* What is not in the table: a close notification (ub_ipc.h: the kernel says the
 * connection `badge` closed; it has no buffer, a real call always has one) drops that
 * connection's open files and with them their locks; anything else is -FS_EINVAL.
 * Out of line, behind the range check every request passes anyway: it costs requests
 * nothing. */
extern uint64_t ub_calls_served;

__attribute__((noinline, cold)) static long not_a_request(long op, struct request *rq)
{
    if (op != UB_IPC_CLOSED || rq->buf != 0)
        return -FS_EINVAL;
    ub_calls_served--; /* fs_handle counted it, but it is no request */
    for (int i = 0; i < NFILE; i++)
        if (files[i].used && files[i].badge == rq->badge)
            files[i].used = 0;
    return 0;
}

static long dispatch(long op, struct request *rq)
{
    if (op < 0 || op >= NREQUESTS || requests[op] == 0)
        return not_a_request(op, rq);
    return requests[op](rq);
}

/* Requests handled since start. External linkage keeps it in the symbol table: the host
 * reads it out of memory by name (bench/ycsb.py), so counting costs the guest one add. */
uint64_t ub_calls_served;

void fs_handle(struct ub_msg *msg)
{
    struct request rq = {
        .badge = msg->badge,
        .buf = msg->buf,
        .arg = {msg->mr[1], msg->mr[2], msg->mr[3]},
    };

    ub_calls_served++;
    io_failed = 0;
    long status = dispatch(msg->mr[0], &rq);
    bflush(); /* every change reaches the device before the reply */
    if (io_failed) {
        status = -FS_EIO;
        rq.out[0] = rq.out[1] = rq.out[2] = 0;
        bforget_all();
    }
    msg->mr[0] = status;
    msg->mr[1] = rq.out[0];
    msg->mr[2] = rq.out[1];
    msg->mr[3] = rq.out[2];
}
