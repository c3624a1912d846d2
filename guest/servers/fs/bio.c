/* bio.c: the device and the buffer cache under every other layer of the fs server.
 *
 *   device  blk_read/blk_write: whole blocks through the block connection's buffer;
 *   cache   bread/brelse/bdirty: NBUF blocks, least recently used evicted first;
 *           bflush writes every dirty block back, contiguous ones in one call.
 *
 * An entry is pinned (refcnt > 0) between bread and brelse and is then never evicted.
 * A dirty entry has changes the device has not seen; they reach it at the end of the
 * request (bflush) or when the entry is evicted, whichever comes first.
 */
#include "fs.h"

/* ---- the device ------------------------------------------------------------------------ */

struct ub_conn blk;
int io_failed;

/* After a failed block call: if the block server is gone (-UB_EPIPE; its supervisor
 * restarts it, with the disk), stop with a fault, so the supervisor restarts this
 * server too; the new one connects to the device in main and mounts it. Reconnecting
 * in place is not possible in kernel space (a handler running on its caller's thread
 * makes no syscall: -UB_EDEADLK), and retrying here would cost every block call the
 * registers to keep its request in: this branch is the only cost, off the fast path.
 * The caller of the request in progress gets -EPIPE; the fs server keeps nothing the
 * device has not got but that request's dirty blocks. */
__attribute__((noinline, cold)) static void blk_failed(long r)
{
    if (r == -UB_EPIPE)
        __builtin_trap();
}

int blk_call(long op, uint32_t lba, uint32_t count)
{
    long mr[4] = {op, lba, count, 0};
    long r = ub_ipc_call(&blk, mr);

    if (r < 0)
        blk_failed(r);
    if (r < 0 || mr[0] != 0) {
        io_failed = 1;
        return -1;
    }
    return 0;
}

/* Blocks lba .. lba+count-1 into dst (count <= BLK_MAX_BLOCKS). */
int blk_read(uint32_t lba, uint32_t count, void *dst)
{
    if (blk_call(BLK_READ, lba, count) < 0)
        return -1;
    memcpy(dst, blk.buf, (uint64_t)count * BSIZE);
    return 0;
}

int blk_write(uint32_t lba, uint32_t count, const void *src)
{
    memcpy(blk.buf, src, (uint64_t)count * BSIZE);
    return blk_call(BLK_WRITE, lba, count);
}

/* ---- the buffer cache ------------------------------------------------------------------ */

static struct buf cache[NBUF];
static uint64_t use_clock;

static int bflush_run(struct buf *first);

/* A pinned entry for block b: b's cached copy, or the least recently used unpinned entry,
 * written back first if dirty, then marked invalid. NULL when every entry is pinned. */
static struct buf *bget(uint32_t b)
{
    struct buf *victim = 0;

    for (int i = 0; i < NBUF; i++) {
        struct buf *e = &cache[i];
        if (e->valid && e->blockno == b) {
            e->refcnt++;
            e->last_use = ++use_clock;
            return e;
        }
        if (e->refcnt == 0 && (victim == 0 || e->last_use < victim->last_use))
            victim = e;
    }
    if (victim == 0 || (victim->dirty && bflush_run(victim) < 0)) {
        io_failed = 1;
        return 0;
    }
    victim->blockno = b;
    victim->valid = 0;
    victim->dirty = 0;
    victim->refcnt = 1;
    victim->last_use = ++use_clock;
    return victim;
}

/* Block b, pinned; NULL (io_failed set) if b is outside the device or cannot be read.
 * The range check is what keeps a corrupt pointer from reaching the device. */
struct buf *bread(uint32_t b)
{
    if (b >= sb.block_count) {
        io_failed = 1;
        return 0;
    }
    struct buf *bp = bget(b);
    if (bp == 0)
        return 0;
    if (!bp->valid) {
        if (blk_read(b, 1, bp->data) < 0) {
            brelse(bp);
            return 0;
        }
        bp->valid = 1;
    }
    return bp;
}

/* Block b, pinned, as zeros and dirty, without reading it: for a newly allocated block. */
struct buf *bzeroed(uint32_t b)
{
    struct buf *bp = bget(b);
    if (bp == 0)
        return 0;
    memset(bp->data, 0, BSIZE);
    bp->valid = 1;
    bdirty(bp);
    return bp;
}

static void bforget(struct buf *e)
{
    e->valid = 0;
    e->dirty = 0;
    e->last_use = 0;
}

/* Block b was freed: its content no longer matters, so it need not be written. */
void binvalidate(uint32_t b)
{
    for (int i = 0; i < NBUF; i++)
        if (cache[i].valid && cache[i].blockno == b && cache[i].refcnt == 0)
            bforget(&cache[i]);
}

/* Blocks lba .. lba+count-1 were just written around the cache: cached copies take
 * the new content (and are clean, since the device has it). */
void bwritten(uint32_t lba, uint32_t count, const uint8_t *src)
{
    for (int i = 0; i < NBUF; i++) {
        struct buf *e = &cache[i];
        if (e->valid && e->blockno >= lba && e->blockno - lba < count) {
            memcpy(e->data, src + (uint64_t)(e->blockno - lba) * BSIZE, BSIZE);
            e->dirty = 0;
        }
    }
}

static struct buf *dirty_entry(uint32_t b)
{
    for (int i = 0; i < NBUF; i++)
        if (cache[i].dirty && cache[i].blockno == b)
            return &cache[i];
    return 0;
}

/* Write `first` and the dirty entries of the blocks right after it, in one call. */
static int bflush_run(struct buf *first)
{
    struct buf *run[BLK_MAX_BLOCKS];
    uint32_t n = 0;

    run[n++] = first;
    while (n < BLK_MAX_BLOCKS && (run[n] = dirty_entry(first->blockno + n)) != 0)
        n++;
    for (uint32_t i = 0; i < n; i++)
        memcpy((uint8_t *)blk.buf + (uint64_t)i * BSIZE, run[i]->data, BSIZE);
    int r = blk_call(BLK_WRITE, first->blockno, n);
    for (uint32_t i = 0; i < n; i++)
        run[i]->dirty = 0; /* on failure too: io_failed ends the request and the cache */
    return r;
}

/* Every dirty block to the device, lowest block first. */
void bflush(void)
{
    for (;;) {
        struct buf *lowest = 0;
        for (int i = 0; i < NBUF; i++)
            if (cache[i].dirty && (lowest == 0 || cache[i].blockno < lowest->blockno))
                lowest = &cache[i];
        if (lowest == 0)
            return;
        bflush_run(lowest);
    }
}

/* After a failed request, forget everything: the device is the only truth. */
void bforget_all(void)
{
    for (int i = 0; i < NBUF; i++) {
        bforget(&cache[i]);
        cache[i].refcnt = 0;
    }
}

