/* bitmap.c: the block bitmap of the fs server: balloc/bfree, and the count of free blocks
 * (statfs). Bit b of the bitmap (byte b / 8, bit b % 8) is set iff block b is used
 * (ubfs.h); freeing a free block or a block outside the data area is corruption and
 * sets io_failed.
 */
#include "fs.h"

/* Where the next search for a free block starts: just past the last one allocated, so
 * a file written in order gets consecutive blocks (one device call per run) and the
 * search skips the full part of the bitmap. Only a hint: a restart begins anew. */
static uint32_t alloc_rotor;

/* The first clear bit of the bitmap in [from, to), marked used; 0 if none. */
static uint32_t balloc_range(uint32_t from, uint32_t to)
{
    for (uint32_t b = from; b < to;) {
        uint32_t block = b / BPB; /* of the bitmap: it holds bits up to end */
        uint32_t end = (uint32_t)min_u64(to, (uint64_t)(block + 1) * BPB);
        struct buf *bp = bread(sb.bitmap_start + block);
        if (bp == 0)
            return 0;
        for (; b < end; b++) {
            uint32_t bit = b % BPB;
            if (bit % 8 == 0 && bp->data[bit / 8] == 0xff && b + 8 <= end) {
                b += 7; /* a full byte: skip it */
                continue;
            }
            if (!(bp->data[bit / 8] & (1u << (bit % 8)))) {
                bp->data[bit / 8] |= (uint8_t)(1u << (bit % 8));
                bdirty(bp);
                brelse(bp);
                return b;
            }
        }
        brelse(bp);
    }
    return 0;
}

/* A free data block, now marked used; zeroed in the cache if `zeroed` (tables must read
 * as no pointers; data blocks are filled by the caller). 0 when the disk is full, or
 * on an I/O error (io_failed). */
uint32_t balloc(int zeroed)
{
    uint32_t start = is_data_block(alloc_rotor) ? alloc_rotor : sb.data_start;
    uint32_t b = balloc_range(start, sb.block_count);

    if (b == 0 && !io_failed)
        b = balloc_range(sb.data_start, start);
    if (b == 0)
        return 0;
    alloc_rotor = b + 1;
    if (zeroed) {
        struct buf *z = bzeroed(b);
        if (z == 0)
            return 0;
        brelse(z);
    }
    return b;
}

void bfree(uint32_t b)
{
    if (!is_data_block(b)) {
        io_failed = 1; /* a corrupt pointer: leave the bitmap alone */
        return;
    }
    struct buf *bp = bread(sb.bitmap_start + b / BPB);
    if (bp == 0)
        return;
    uint32_t bit = b % BPB;
    if (!(bp->data[bit / 8] & (1u << (bit % 8))))
        io_failed = 1; /* freeing a free block: two owners, i.e. corruption */
    bp->data[bit / 8] &= (uint8_t)~(1u << (bit % 8));
    bdirty(bp);
    brelse(bp);
    binvalidate(b);
}

/* Free data blocks: clear bits from data_start on, one bitmap block at a time. */
uint64_t count_free_blocks(void)
{
    uint64_t count = 0;

    for (uint32_t b = sb.data_start; b < sb.block_count && !io_failed;) {
        struct buf *bp = bread(sb.bitmap_start + b / BPB);
        if (bp == 0)
            break;
        uint32_t end = (uint32_t)min_u64(sb.block_count, (uint64_t)(b / BPB + 1) * BPB);
        for (; b < end; b++)
            count += !(bp->data[(b % BPB) / 8] & (1u << (b % 8)));
        brelse(bp);
    }
    return count;
}
