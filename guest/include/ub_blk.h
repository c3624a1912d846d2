/* ub_blk.h: the block-device protocol (served by guest/servers/ramdisk).
 *
 * A block device is an array of BLK_BLOCK_SIZE-byte blocks numbered from 0 (LBA).
 * Data moves through the connection's shared buffer: a READ or WRITE of `count`
 * blocks uses buf[0 .. count * BLK_BLOCK_SIZE), so count is at most
 * UB_IPC_BUFFER_SIZE / BLK_BLOCK_SIZE (BLK_MAX_BLOCKS).
 *
 * Request mr[0] is the operation; reply mr[0] is 0 or -UB_Exxx (-UB_EINVAL for a bad
 * operation, a count of 0 or above BLK_MAX_BLOCKS, or a range past the last block).
 */
#ifndef UB_BLK_H
#define UB_BLK_H

#include "ub_syscall.h"

#define BLK_SERVICE "blk"
#define BLK_BLOCK_SIZE 4096
#define BLK_MAX_BLOCKS (UB_IPC_BUFFER_SIZE / BLK_BLOCK_SIZE)

/* {BLK_INFO} -> {0, block size, block count, 0} */
#define BLK_INFO 1
/* {BLK_READ, lba, count} -> {0}: blocks lba .. lba+count-1 are in buf */
#define BLK_READ 2
/* {BLK_WRITE, lba, count} -> {0}: buf's blocks are stored at lba .. lba+count-1 */
#define BLK_WRITE 3
/* {BLK_FLUSH} -> {0}: every earlier WRITE is durable (a RAM disk: already so) */
#define BLK_FLUSH 4

#endif
