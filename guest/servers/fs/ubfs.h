/* ubfs.h: the on-disk format of the file system (guest/servers/fs), "ubfs".
 *
 * Little-endian, in BLK_BLOCK_SIZE (4096-byte) blocks of the block device:
 *
 *   block 0                    superblock
 *   bitmap_start ..            block bitmap: bit b (byte b / 8, bit b % 8) set = used
 *   inode_start ..             inode table, UBFS_INODES_PER_BLOCK inodes per block
 *   data_start .. block_count  data and indirect blocks
 *
 * Invariants:
 *  - Every block below data_start is marked used in the bitmap; a data block is marked
 *    used iff exactly one inode points at it (directly or through an indirect block).
 *  - Inode 0 is never used (0 means "no inode" in pointers and directory entries);
 *    inode UBFS_ROOT_INODE is the root directory, the only directory.
 *  - A block pointer 0 is a hole: it reads as zeros. Bytes of a file at or beyond
 *    `size` are zero on disk too (truncate clears the tail of the last block), so
 *    growing a file never exposes old data.
 *  - A directory's content is an array of ubfs_dirent; inum 0 marks a free slot.
 *  - The server writes every change through to the device before replying, so the
 *    device alone holds the file system's state: a restarted server mounts it as is.
 *    A crash inside a request can break the invariants above; recover.c, run at every
 *    mount, makes them hold again (the bitmap is rebuilt from the pointers).
 *
 * A Python reader of this format lives in src/underbridge/fs/ubfs.py; keep them in step.
 */
#ifndef UBFS_H
#define UBFS_H

#include <stdint.h>

#include "ub_blk.h"

#define UBFS_MAGIC "UBFS0001" /* 8 bytes, no NUL on disk */
#define UBFS_BLOCK_SIZE BLK_BLOCK_SIZE
#define UBFS_ROOT_INODE 1
#define UBFS_NDIRECT 12
#define UBFS_PTRS_PER_BLOCK (UBFS_BLOCK_SIZE / 4)
#define UBFS_INODE_SIZE 128
#define UBFS_INODES_PER_BLOCK (UBFS_BLOCK_SIZE / UBFS_INODE_SIZE)
#define UBFS_DIRENT_SIZE 64
#define UBFS_DIRENT_NAME 60 /* with its NUL: names are at most 59 bytes */
#define UBFS_BLOCKS_PER_INODE 4 /* mkfs: one inode per this many blocks */

#define UBFS_TYPE_FREE 0
#define UBFS_TYPE_FILE 1
#define UBFS_TYPE_DIR 2

struct ubfs_super {
    char magic[8];
    uint32_t block_size;
    uint32_t block_count;
    uint32_t bitmap_start;
    uint32_t bitmap_blocks;
    uint32_t inode_start;
    uint32_t inode_blocks;
    uint32_t inode_count;
    uint32_t data_start;
    uint32_t root_inode;
};

struct ubfs_inode {
    uint16_t type;
    uint16_t nlink;
    uint32_t reserved0;
    uint64_t size;
    uint32_t direct[UBFS_NDIRECT];
    uint32_t indirect;        /* a block of UBFS_PTRS_PER_BLOCK pointers */
    uint32_t double_indirect; /* a block of pointers to such blocks */
    uint8_t reserved1[UBFS_INODE_SIZE - 72];
};

struct ubfs_dirent {
    uint32_t inum;
    char name[UBFS_DIRENT_NAME];
};

_Static_assert(sizeof(struct ubfs_inode) == UBFS_INODE_SIZE, "inode size");
_Static_assert(sizeof(struct ubfs_dirent) == UBFS_DIRENT_SIZE, "dirent size");
_Static_assert(sizeof(struct ubfs_super) <= UBFS_BLOCK_SIZE, "superblock size");

#endif
