/* ramdisk: a block device in RAM, serving the block protocol of ub_blk.h.
 *
 * usage: ramdisk [SERVICE]   registers SERVICE (default "blk") and serves it forever.
 *
 * The disk is the static array ub_ramdisk: RAMDISK_BLOCKS blocks of BLK_BLOCK_SIZE
 * bytes, zero at start (it lives in .bss). Its name has external linkage so the
 * symbol stays in the ELF's symbol table: the host reads the disk image straight out
 * of emulated memory by that symbol (underbridge.fs.storage).
 *
 * Memory: the disk belongs to this server alone; a request's data is copied between
 * the disk and the calling connection's shared buffer (msg->buf), whose size is
 * UB_IPC_BUFFER_SIZE. Every request is validated before anything is copied (the
 * registers come from an untrusted caller): the operation, 1 <= count <=
 * BLK_MAX_BLOCKS (so count blocks fit the shared buffer), and lba .. lba+count-1
 * inside the disk, computed without overflow.
 *
 * ub_calls_served counts requests, for the host to read by symbol like the disk.
 *
 * In kernel space the handler runs on callers' threads through gates, where any
 * syscall fails with -UB_EDEADLK: the handler makes none (no printing either).
 */
#include <stdint.h>

#include "ub.h"
#include "ub_ipc.h"
#include "ub_blk.h"

#define RAMDISK_BLOCKS 1536 /* 6 MiB: with the code, inside half a 16 MiB region */

_Static_assert(BLK_MAX_BLOCKS * BLK_BLOCK_SIZE <= UB_IPC_BUFFER_SIZE, "buffer too small");

unsigned char ub_ramdisk[RAMDISK_BLOCKS * BLK_BLOCK_SIZE] __attribute__((aligned(4096)));

/* Is {lba, count} a transfer this disk can do through one shared buffer? */
static int valid_range(long lba, long count)
{
    if (count < 1 || count > BLK_MAX_BLOCKS)
        return 0;
    return lba >= 0 && lba < RAMDISK_BLOCKS && count <= RAMDISK_BLOCKS - lba;
}

/* Requests handled since start. External linkage keeps it in the symbol table: the host
 * reads it out of memory by name (bench/ycsb.py), so counting costs the guest one add. */
uint64_t ub_calls_served;

static void handle(struct ub_msg *msg)
{
    long op = msg->mr[0], lba = msg->mr[1], count = msg->mr[2];
    unsigned char *disk;

    ub_calls_served++;

    msg->mr[1] = msg->mr[2] = msg->mr[3] = 0;
    switch (op) {
    case BLK_INFO:
        msg->mr[0] = 0;
        msg->mr[1] = BLK_BLOCK_SIZE;
        msg->mr[2] = RAMDISK_BLOCKS;
        return;
    case BLK_READ:
    case BLK_WRITE:
        if (!valid_range(lba, count))
            break;
        disk = ub_ramdisk + (unsigned long)lba * BLK_BLOCK_SIZE;
        if (op == BLK_READ)
            memcpy(msg->buf, disk, (unsigned long)count * BLK_BLOCK_SIZE);
        else
            memcpy(disk, msg->buf, (unsigned long)count * BLK_BLOCK_SIZE);
        msg->mr[0] = 0;
        return;
    case BLK_FLUSH:
        msg->mr[0] = 0; /* RAM: every write is already as durable as it gets */
        return;
    }
    msg->mr[0] = -UB_EINVAL;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : BLK_SERVICE;

    long service = ub_ipc_register(name, handle);
    if (service < 0) {
        ub_printf("ramdisk: cannot register %s: %ld\n", name, service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
