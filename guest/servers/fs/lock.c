/* lock.c: SQLite's file locks in the fs server: the rules (ub_fs.h) and the requests
 * LOCK, UNLOCK and CHECK_RESERVED. A handle holds one level (struct file's lock); a
 * file's state is the levels of all its handles, so closing a handle drops its lock.
 */
#include "fs.h"

/* The highest lock level any handle but `self` holds on self's file. */
static int others_level(const struct file *self)
{
    int level = FS_LOCK_NONE;

    for (int i = 0; i < NFILE; i++) {
        const struct file *f = &files[i];
        if (f != self && f->used && f->inum == self->inum && f->lock > level)
            level = f->lock;
    }
    return level;
}

/* May `f` go up to `level`? SQLite's rules (ub_fs.h): SHARED unless someone is PENDING
 * or above; RESERVED and PENDING unless someone else is RESERVED or above; EXCLUSIVE
 * only when nobody else holds anything. */
static long lock_check(const struct file *f, long level)
{
    int others = others_level(f);

    switch (level) {
    case FS_LOCK_SHARED:
        return others >= FS_LOCK_PENDING ? -FS_EBUSY : 0;
    case FS_LOCK_RESERVED:
    case FS_LOCK_PENDING:
        return others >= FS_LOCK_RESERVED ? -FS_EBUSY : 0;
    case FS_LOCK_EXCLUSIVE:
        return others >= FS_LOCK_SHARED ? -FS_EBUSY : 0;
    }
    return -FS_EINVAL;
}

long fs_lock(struct request *rq)
{
    struct file *f = file_of(rq->badge, rq->arg[0]);
    long level = rq->arg[1];

    if (f == 0)
        return -FS_EBADF;
    if (level < FS_LOCK_SHARED || level > FS_LOCK_EXCLUSIVE)
        return -FS_EINVAL;
    if (level <= f->lock)
        return 0; /* already held */
    if (f->lock == FS_LOCK_NONE && level != FS_LOCK_SHARED)
        return -FS_EINVAL; /* SQLite always takes SHARED first */
    long r = lock_check(f, level);
    if (r == 0)
        f->lock = (int)level;
    return r;
}

long fs_unlock(struct request *rq)
{
    struct file *f = file_of(rq->badge, rq->arg[0]);
    long level = rq->arg[1];

    if (f == 0)
        return -FS_EBADF;
    if (level != FS_LOCK_NONE && level != FS_LOCK_SHARED)
        return -FS_EINVAL;
    if (level < f->lock)
        f->lock = (int)level;
    return 0;
}

long fs_check_reserved(struct request *rq)
{
    struct file *f = file_of(rq->badge, rq->arg[0]);

    if (f == 0)
        return -FS_EBADF;
    rq->out[0] = f->lock >= FS_LOCK_RESERVED || others_level(f) >= FS_LOCK_RESERVED;
    return 0;
}

