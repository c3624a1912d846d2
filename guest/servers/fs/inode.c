/* inode.c: inodes, the block map and file data of the fs server.
 *
 *   inodes  iget/iupdate/ialloc: a struct inode is a copy of the disk inode;
 *   map     bmap (file block -> disk block, filling holes on request), itrunc;
 *   data    readi/writei: whole contiguous blocks go straight between the caller's
 *           buffer and the device (one call for up to BLK_MAX_BLOCKS), partial blocks
 *           through the cache.
 *
 * Every block pointer read from the disk is checked against the data area before use
 * (a pointer outside it is corruption: io_failed, and nothing is touched).
 */
#include "fs.h"

/* ---- inodes ----------------------------------------------------------------------------- */

int iget(uint32_t inum, struct inode *ip)
{
    if (inum == 0 || inum >= sb.inode_count) {
        io_failed = 1; /* a directory entry naming no inode: corruption */
        return -1;
    }
    struct buf *bp = bread(sb.inode_start + inum / IPB);
    if (bp == 0)
        return -1;
    ip->inum = inum;
    ip->dirty = 0;
    memcpy(&ip->d, bp->data + (inum % IPB) * UBFS_INODE_SIZE, UBFS_INODE_SIZE);
    brelse(bp);
    return 0;
}

void iupdate(struct inode *ip)
{
    if (!ip->dirty)
        return;
    struct buf *bp = bread(sb.inode_start + ip->inum / IPB);
    if (bp == 0)
        return;
    memcpy(bp->data + (ip->inum % IPB) * UBFS_INODE_SIZE, &ip->d, UBFS_INODE_SIZE);
    bdirty(bp);
    brelse(bp);
    ip->dirty = 0;
}

/* A free inode made an empty file in *ip (not yet written back); -1 if none is free. */
int ialloc(struct inode *ip)
{
    for (uint32_t inum = UBFS_ROOT_INODE + 1; inum < sb.inode_count; inum++) {
        struct buf *bp = bread(sb.inode_start + inum / IPB);
        if (bp == 0)
            return -1;
        const struct ubfs_inode *d =
            (const struct ubfs_inode *)(bp->data + (inum % IPB) * UBFS_INODE_SIZE);
        int free = d->type == UBFS_TYPE_FREE;
        brelse(bp);
        if (free) {
            ip->inum = inum;
            memset(&ip->d, 0, sizeof ip->d);
            ip->d.type = UBFS_TYPE_FILE;
            ip->d.nlink = 1;
            ip->dirty = 1;
            return 0;
        }
    }
    return -1;
}

/* ---- the block map --------------------------------------------------------------------
 * File block bn is direct[bn] for bn < NDIRECT, then entries of the indirect block, then
 * entries of the blocks the double-indirect block points at. A pointer of 0 is a hole. */

/* The pointer at *slot marks its holder changed: the inode, or the table block `owner`. */
static void slot_changed(struct inode *ip, struct buf *owner)
{
    if (owner)
        bdirty(owner);
    else
        ip->dirty = 1;
}

/* The data block `index` below *slot, which points at a data block (level 0) or a table
 * of pointers to level-1 things. With `alloc`, holes on the way are filled: a new data
 * block sets *fresh (its content is the caller's to write), a new table starts zeroed.
 * Returns 0 for a hole (no alloc), a full disk or an I/O error (io_failed). */
static uint32_t map_slot(struct inode *ip, struct buf *owner, uint32_t *slot, int level,
                         uint32_t index, int alloc, int *fresh)
{
    uint32_t addr = *slot;
    int made = 0;

    if (addr == 0) {
        if (!alloc || (addr = balloc(level > 0)) == 0)
            return 0;
        *slot = addr;
        slot_changed(ip, owner);
        made = 1;
    } else if (!is_data_block(addr)) {
        io_failed = 1;
        return 0;
    }
    if (level == 0) {
        if (made && fresh)
            *fresh = 1;
        return addr;
    }
    struct buf *bp = bread(addr);
    if (bp == 0)
        return 0;
    uint32_t span = level == 2 ? NINDIRECT : 1;
    uint32_t *ptrs = (uint32_t *)bp->data;
    uint32_t got = map_slot(ip, bp, &ptrs[index / span], level - 1, index % span, alloc, fresh);
    brelse(bp);
    if (got == 0 && made) { /* nothing went below the table we just made: give it back */
        bfree(addr);
        *slot = 0;
    }
    return got;
}

uint32_t bmap(struct inode *ip, uint64_t bn, int alloc, int *fresh)
{
    if (bn < NDIRECT)
        return map_slot(ip, 0, &ip->d.direct[bn], 0, 0, alloc, fresh);
    bn -= NDIRECT;
    if (bn < NINDIRECT)
        return map_slot(ip, 0, &ip->d.indirect, 1, (uint32_t)bn, alloc, fresh);
    bn -= NINDIRECT;
    if (bn < (uint64_t)NINDIRECT * NINDIRECT)
        return map_slot(ip, 0, &ip->d.double_indirect, 2, (uint32_t)bn, alloc, fresh);
    return 0;
}

/* Map up to `max` file blocks from bn on as one run the device can move in one call:
 * either consecutive disk blocks (*first is the first) or holes (*first is 0, only
 * without alloc). Returns the run's length; 0 if bn could not be mapped (alloc). With
 * alloc, a block mapped past the run's end stays mapped for the caller's next run. */
static uint32_t map_run(struct inode *ip, uint64_t bn, uint32_t max, int alloc,
                        uint32_t *first)
{
    uint32_t n;

    *first = bmap(ip, bn, alloc, 0);
    if (*first == 0 && (alloc || io_failed))
        return 0;
    for (n = 1; n < max; n++) {
        uint32_t b = bmap(ip, bn + n, alloc, 0);
        if (*first == 0 ? b != 0 : b != *first + n)
            break;
    }
    return n;
}

/* Free the blocks below *slot that hold file blocks >= keep (counted from the first
 * block *slot covers), and the table itself once it points at nothing. */
static void trunc_slot(struct inode *ip, struct buf *owner, uint32_t *slot, int level,
                       uint64_t keep)
{
    static const uint64_t covers[3] = {1, NINDIRECT, (uint64_t)NINDIRECT * NINDIRECT};
    uint32_t addr = *slot;

    if (addr == 0 || keep >= covers[level])
        return;
    if (level > 0) {
        if (!is_data_block(addr)) {
            io_failed = 1;
            return;
        }
        struct buf *bp = bread(addr);
        if (bp == 0)
            return;
        uint32_t *ptrs = (uint32_t *)bp->data;
        int left = 0;
        for (uint32_t i = 0; i < NINDIRECT; i++) {
            uint64_t start = (uint64_t)i * covers[level - 1];
            trunc_slot(ip, bp, &ptrs[i], level - 1, keep > start ? keep - start : 0);
            left |= ptrs[i] != 0;
        }
        brelse(bp);
        if (left)
            return;
    }
    bfree(addr);
    *slot = 0;
    slot_changed(ip, owner);
}

/* The file is now `size` bytes: blocks past it are freed, and bytes past it in its last
 * block zeroed (ubfs.h: bytes beyond size are zero on disk, so growing exposes zeros). */
void itrunc(struct inode *ip, uint64_t size)
{
    uint64_t keep = (size + BSIZE - 1) / BSIZE;

    for (uint32_t i = 0; i < NDIRECT; i++)
        trunc_slot(ip, 0, &ip->d.direct[i], 0, keep > i ? keep - i : 0);
    trunc_slot(ip, 0, &ip->d.indirect, 1, keep > NDIRECT ? keep - NDIRECT : 0);
    trunc_slot(ip, 0, &ip->d.double_indirect, 2,
               keep > NDIRECT + NINDIRECT ? keep - NDIRECT - NINDIRECT : 0);
    if (size < ip->d.size && size % BSIZE) {
        uint32_t b = bmap(ip, size / BSIZE, 0, 0);
        struct buf *bp = b ? bread(b) : 0;
        if (bp) {
            memset(bp->data + size % BSIZE, 0, BSIZE - size % BSIZE);
            bdirty(bp);
            brelse(bp);
        }
    }
    if (ip->d.size != size) {
        ip->d.size = size;
        ip->dirty = 1;
    }
    iupdate(ip);
}

/* ---- file data ------------------------------------------------------------------------- */

/* Up to n bytes at off into dst; returns how many (fewer only at the end of the file). */
uint64_t readi(struct inode *ip, uint8_t *dst, uint64_t off, uint64_t n)
{
    uint64_t tot, m;

    if (off >= ip->d.size)
        return 0;
    n = min_u64(n, ip->d.size - off);
    for (tot = 0; tot < n && !io_failed; tot += m, off += m) {
        uint64_t boff = off % BSIZE;
        if (boff == 0 && n - tot >= BSIZE) { /* whole blocks: straight from the device */
            uint32_t first;
            uint32_t k = map_run(ip, off / BSIZE,
                                 (uint32_t)min_u64((n - tot) / BSIZE, BLK_MAX_BLOCKS), 0, &first);
            if (k == 0)
                break;
            m = (uint64_t)k * BSIZE;
            if (first == 0)
                memset(dst + tot, 0, m);
            else if (blk_read(first, k, dst + tot) < 0)
                break;
            continue;
        }
        m = min_u64(n - tot, BSIZE - boff);
        uint32_t b = bmap(ip, off / BSIZE, 0, 0);
        if (b == 0) {
            memset(dst + tot, 0, m);
            continue;
        }
        struct buf *bp = bread(b);
        if (bp == 0)
            break;
        memcpy(dst + tot, bp->data + boff, m);
        brelse(bp);
    }
    return tot;
}

/* n bytes from src at off, filling holes and growing the file as needed; returns how
 * many were written (fewer when the disk fills, or on io_failed). off + n must not pass
 * MAXFILE_BYTES (the caller checks). */
uint64_t writei(struct inode *ip, const uint8_t *src, uint64_t off, uint64_t n)
{
    uint64_t tot, m;

    for (tot = 0; tot < n && !io_failed; tot += m, off += m) {
        uint64_t boff = off % BSIZE;
        if (boff == 0 && n - tot >= BSIZE) { /* whole blocks: straight to the device */
            uint32_t first;
            uint32_t k = map_run(ip, off / BSIZE,
                                 (uint32_t)min_u64((n - tot) / BSIZE, BLK_MAX_BLOCKS), 1, &first);
            if (k == 0 || blk_write(first, k, src + tot) < 0)
                break;
            bwritten(first, k, src + tot);
            m = (uint64_t)k * BSIZE;
            continue;
        }
        int fresh = 0;
        uint32_t b = bmap(ip, off / BSIZE, 1, &fresh);
        if (b == 0)
            break;
        /* A new block starts as zeros, so the bytes around the write obey ubfs.h. */
        struct buf *bp = fresh ? bzeroed(b) : bread(b);
        if (bp == 0)
            break;
        m = min_u64(n - tot, BSIZE - boff);
        memcpy(bp->data + boff, src + tot, m);
        bdirty(bp);
        brelse(bp);
    }
    if (tot > 0 && off > ip->d.size) {
        ip->d.size = off;
        ip->dirty = 1;
    }
    iupdate(ip);
    return tot;
}

/* Free inodes (inode 0 is never used, so it does not count). */
uint64_t count_free_inodes(void)
{
    uint64_t count = 0;

    for (uint32_t first = 0; first < sb.inode_count && !io_failed; first += IPB) {
        struct buf *bp = bread(sb.inode_start + first / IPB);
        if (bp == 0)
            break;
        const struct ubfs_inode *d = (const struct ubfs_inode *)bp->data;
        for (uint32_t i = 0; i < IPB && first + i < sb.inode_count; i++)
            count += first + i != 0 && d[i].type == UBFS_TYPE_FREE;
        brelse(bp);
    }
    return count;
}
