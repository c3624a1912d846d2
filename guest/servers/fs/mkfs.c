/* mkfs.c: mounting the fs server's device, and making an empty file system on it when it
 * holds none (on the main thread, before serving). A superblock is used only if its
 * geometry fits the device; mkfs writes the superblock last, so a device with the magic
 * has all the rest. A device that held one is recovered (recover.c) before it is used.
 */
#include "fs.h"

struct ubfs_super sb;

/* Is the superblock's geometry possible on a device of `blocks` blocks? */
static int geometry_ok(const struct ubfs_super *s, uint64_t blocks)
{
    uint64_t bitmap_end = (uint64_t)s->bitmap_start + s->bitmap_blocks;
    uint64_t inode_end = (uint64_t)s->inode_start + s->inode_blocks;

    return s->block_size == BSIZE && s->block_count <= blocks && s->bitmap_start >= 1 &&
           (uint64_t)s->bitmap_blocks * BPB >= s->block_count && s->inode_start >= bitmap_end &&
           s->inode_count <= (uint64_t)s->inode_blocks * IPB &&
           s->inode_count > UBFS_ROOT_INODE && s->data_start >= inode_end &&
           s->data_start < s->block_count && s->root_inode == UBFS_ROOT_INODE;
}

/* Write an empty file system over the whole device (on the main thread, before serving). */
static int mkfs(uint32_t blocks)
{
    struct ubfs_super s;
    uint32_t inodes = (blocks + UBFS_BLOCKS_PER_INODE - 1) / UBFS_BLOCKS_PER_INODE;

    memset(&s, 0, sizeof s);
    memcpy(s.magic, UBFS_MAGIC, 8);
    s.block_size = BSIZE;
    s.block_count = blocks;
    s.bitmap_start = 1;
    s.bitmap_blocks = (blocks + BPB - 1) / BPB;
    s.inode_start = s.bitmap_start + s.bitmap_blocks;
    s.inode_blocks = (inodes + IPB - 1) / IPB;
    s.inode_count = s.inode_blocks * IPB;
    s.data_start = s.inode_start + s.inode_blocks;
    s.root_inode = UBFS_ROOT_INODE;
    if (!geometry_ok(&s, blocks))
        return -1; /* too small a device */
    sb = s; /* bread checks block numbers against it */

    /* Bitmap and inode table start as zeros; then the metadata blocks are marked used
     * and the root made; the superblock goes last, so a device with the magic has all
     * the rest. */
    for (uint32_t b = 1; b < s.data_start; b++) {
        struct buf *bp = bzeroed(b);
        if (bp == 0)
            return -1;
        brelse(bp);
    }
    for (uint32_t b = 0; b < s.data_start; b++) {
        struct buf *bp = bread(s.bitmap_start + b / BPB);
        if (bp == 0)
            return -1;
        bp->data[(b % BPB) / 8] |= (uint8_t)(1u << (b % 8));
        bdirty(bp);
        brelse(bp);
    }
    struct inode root = {.inum = UBFS_ROOT_INODE, .dirty = 1};
    root.d.type = UBFS_TYPE_DIR;
    root.d.nlink = 1;
    iupdate(&root);
    bflush();

    struct buf *bp = bzeroed(0);
    if (bp == 0)
        return -1;
    memcpy(bp->data, &s, sizeof s);
    brelse(bp);
    bflush();
    return io_failed ? -1 : 0;
}

/* Mount the device: 1 if it held a file system (recovered: recover.c, what it changed
 * in *fixed), 0 if one was made, -1 on failure. */
int mount(uint32_t *blocks, struct recovery *fixed)
{
    long mr[4] = {BLK_INFO, 0, 0, 0};

    if (ub_ipc_call(&blk, mr) < 0 || mr[0] != 0 || mr[1] != BSIZE || mr[2] < 2 ||
        mr[2] > 0xffffffffL)
        return -1;
    *blocks = (uint32_t)mr[2];
    sb.block_count = *blocks; /* lets bread reach block 0 */
    struct buf *bp = bread(0);
    if (bp == 0)
        return -1;
    struct ubfs_super s;
    memcpy(&s, bp->data, sizeof s);
    brelse(bp);
    if (memcmp(s.magic, UBFS_MAGIC, 8) != 0)
        return mkfs(*blocks) < 0 ? -1 : 0;
    if (!geometry_ok(&s, *blocks))
        return -1;
    sb = s;
    return recover(fixed) < 0 ? -1 : 1;
}

