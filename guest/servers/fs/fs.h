/* fs.h: what the fs server's layers share (private to guest/servers/fs; the protocol is
 * ub_fs.h, the on-disk format ubfs.h). After the state every layer uses, one section
 * per file, bottom up as in fs.c's overview: a file calls only into the files above its
 * own section here (and into its own).
 */
#ifndef FS_H
#define FS_H

#include <stdint.h>

#include "ub.h"
#include "ub_ipc.h"
#include "ub_blk.h"
#include "ub_fs.h"
#include "ubfs.h"

#define BSIZE UBFS_BLOCK_SIZE
#define BPB (BSIZE * 8) /* bitmap bits per block */
#define IPB UBFS_INODES_PER_BLOCK
#define NDIRECT UBFS_NDIRECT
#define NINDIRECT UBFS_PTRS_PER_BLOCK
#define MAXFILE_BLOCKS ((uint64_t)NDIRECT + NINDIRECT + (uint64_t)NINDIRECT * NINDIRECT)
#define MAXFILE_BYTES (MAXFILE_BLOCKS * BSIZE)
#define DIRENTS_PER_BLOCK (BSIZE / UBFS_DIRENT_SIZE)

#define NBUF 32  /* cached blocks */
#define NFILE 64 /* open handles, all connections together */

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---- the state every layer uses ------------------------------------------------------ */

extern struct ub_conn blk;   /* bio.c: the block server's connection; blk.buf is ours with it */
extern struct ubfs_super sb; /* mkfs.c: the mounted file system's superblock */

/* bio.c: set when a transfer fails or the disk holds an impossible pointer during the
 * current request; the request then replies -FS_EIO (fs_handle resets it per request). */
extern int io_failed;

/* ---- bio.c: the device and the buffer cache ----------------------------------------- */

/* A cache entry. It is pinned (refcnt > 0) between bread and brelse and is then never
 * evicted. A dirty entry has changes the device has not seen. */
struct buf {
    uint32_t blockno;
    int valid;         /* data holds block blockno */
    int dirty;         /* data differs from the device */
    int refcnt;        /* pins */
    uint64_t last_use; /* 0 for an invalid entry: reused first */
    uint8_t data[BSIZE] __attribute__((aligned(64))); /* whole 64-byte lines for memcpy */
};

int blk_call(long op, uint32_t lba, uint32_t count);
int blk_read(uint32_t lba, uint32_t count, void *dst);
int blk_write(uint32_t lba, uint32_t count, const void *src);
struct buf *bread(uint32_t b);
struct buf *bzeroed(uint32_t b);
void binvalidate(uint32_t b);
void bwritten(uint32_t lba, uint32_t count, const uint8_t *src);
void bflush(void);
void bforget_all(void);

/* Unpin an entry from bread or bzeroed. */
static inline void brelse(struct buf *bp)
{
    bp->refcnt--;
}

/* Mark a pinned entry changed: it reaches the device by the end of the request. */
static inline void bdirty(struct buf *bp)
{
    bp->dirty = 1;
}

/* ---- bitmap.c: the block bitmap ----------------------------------------------------- */

/* Is b in the data area, where file and table blocks live? */
static inline int is_data_block(uint32_t b)
{
    return b >= sb.data_start && b < sb.block_count;
}

uint32_t balloc(int zeroed);
void bfree(uint32_t b);
uint64_t count_free_blocks(void);

/* ---- inode.c: inodes, the block map, file data -------------------------------------- */

/* An inode as the server works on it: a copy of the disk inode, written back by iupdate
 * when dirty. */
struct inode {
    uint32_t inum;
    int dirty;
    struct ubfs_inode d;
};

int iget(uint32_t inum, struct inode *ip);
void iupdate(struct inode *ip);
int ialloc(struct inode *ip);
uint32_t bmap(struct inode *ip, uint64_t bn, int alloc, int *fresh);
void itrunc(struct inode *ip, uint64_t size);
uint64_t readi(struct inode *ip, uint8_t *dst, uint64_t off, uint64_t n);
uint64_t writei(struct inode *ip, const uint8_t *src, uint64_t off, uint64_t n);
uint64_t count_free_inodes(void);

/* ---- dir.c: names and the root directory -------------------------------------------- */

/* A name as the directory stores it: NUL-padded to the full field. */
typedef char dname[UBFS_DIRENT_NAME];

long get_name(const uint8_t *buf, dname name);
long lookup(const dname name, struct inode *ip, uint64_t *off);
long create(const dname name, struct inode *ip);
void dirunlink(uint64_t off);

/* ---- file.c: the open-file table ---------------------------------------------------- */

struct file {
    int used;
    long badge; /* the connection that owns the handle */
    uint32_t inum;
    int lock; /* FS_LOCK_* */
};

extern struct file files[NFILE];

struct file *file_of(long badge, long handle);
int is_open(uint32_t inum);
int file_slot(void);

/* ---- the requests: lock.c (SQLite's locks) and requests.c (the rest) ---------------- */

/* A request: the caller's badge, its buffer and mr[1..3] (arg). A handler returns the
 * reply's mr[0] and leaves mr[1..3] in out (zeros unless set). */
struct request {
    long badge;
    uint8_t *buf;
    long arg[3];
    long out[3];
};

long fs_lock(struct request *rq);
long fs_unlock(struct request *rq);
long fs_check_reserved(struct request *rq);

/* Serve one message of the fs protocol (ub_fs.h): the handler main registers. */
void fs_handle(struct ub_msg *msg);

/* ---- recover.c: crash recovery at mount ---------------------------------------------- */

/* What recover() changed: entries cleared, unnamed inodes freed, nlinks set, pointers
 * past a size dropped, tails zeroed, bitmap bits flipped; skipped if the root directory
 * itself is corrupt (then nothing is checked). */
struct recovery {
    uint32_t entries, inodes, links, pointers, tails, bits, skipped;
};

int recover(struct recovery *fixed);

/* ---- mkfs.c: mounting, and making a file system -------------------------------------- */

int mount(uint32_t *blocks, struct recovery *fixed);

#endif
