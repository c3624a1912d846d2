/* recover.c: crash recovery at mount. The fs server may die at any instruction (a fault,
 * a kill, a spent budget); this pass, run by mount() on the main thread before the
 * server registers, turns whatever a crash left on the device back into a file system
 * that meets every invariant of ubfs.h (src/underbridge/fs/ubfs.py checks them).
 *
 * The design: no log. The device's inodes, tables and directory entries are the truth;
 * the bitmap is derived from them and rebuilt here. This costs the requests nothing
 * (they run exactly as before), and mount pays a scan.
 *
 * What a crash can leave. Every request ends with bflush, so the device holds the state
 * after the last completed request plus SOME of the block writes of the request in
 * progress (each block call is whole: the block server does it or not; bflush goes
 * lowest block first and an eviction may write a block early, so any subset). A request
 * either only allocates (WRITE, OPEN with create) or only frees (TRUNCATE, DELETE), so
 * no block is ever freed and reused within one request: a crash cannot point two inodes
 * at one block. What it can leave, and what this pass does about each:
 *   - an entry naming a freed inode (DELETE wrote the inode first), a torn or stale
 *     entry (a new directory block written after the root inode that covers it): an
 *     entry that does not name an otherwise unnamed file inode with a valid, unique name
 *     is cleared (earlier entries win);
 *   - a file inode no entry names (OPEN's create wrote the inode first, DELETE cleared
 *     the entry first): it is freed (no file is open across a crash, so none is an
 *     unlinked open file); a named file's nlink is set to 1;
 *   - pointers to blocks at or past a file's size (size written, pointers not yet
 *     cleared, or the reverse): dropped; the bytes past the size in the last block
 *     (a stale block, or a tail not yet cleared) are zeroed;
 *   - bits that disagree with the pointers (any order of bitmap and inode writes):
 *     the bitmap is rebuilt: metadata blocks and exactly the blocks used inodes point at.
 * A consistent device is left byte for byte as it was (nothing is written).
 *
 * What it does not do: repair what no crash makes. A pointer outside the data area is
 * corruption; it is left alone (its file's requests fail with FS_EIO, as before), and
 * nothing of its file is trimmed.
 *
 * Limits: the pass keeps a bit per inode and every valid name in static memory, for up
 * to RECOVER_MAX_INODES inodes and RECOVER_MAX_BITMAP bitmap blocks; a larger file
 * system is refused at mount rather than served unchecked.
 */
#include "fs.h"

#define RECOVER_MAX_INODES 1024
#define RECOVER_MAX_BITMAP 4

static uint8_t named[RECOVER_MAX_INODES / 8];       /* inodes an entry names */
static dname names[RECOVER_MAX_INODES];             /* the names kept so far */
static uint32_t name_count;
static uint8_t bitmap[RECOVER_MAX_BITMAP * BSIZE];  /* the bitmap as it must be */
static struct recovery fixes;

static int bit(const uint8_t *bits, uint32_t n)
{
    return bits[n / 8] >> (n % 8) & 1;
}

static void set_bit(uint8_t *bits, uint32_t n)
{
    bits[n / 8] |= (uint8_t)(1u << (n % 8));
}

/* ---- entries ------------------------------------------------------------------------- */

/* A name field as create() writes it: non-empty, NUL-terminated, no '/', NUL-padded. */
static int name_ok(const char *name)
{
    uint32_t len = 0;

    while (len < UBFS_DIRENT_NAME && name[len] != '\0') {
        if (name[len] == '/')
            return 0;
        len++;
    }
    if (len == 0 || len == UBFS_DIRENT_NAME)
        return 0;
    for (uint32_t i = len; i < UBFS_DIRENT_NAME; i++)
        if (name[i] != '\0')
            return 0;
    return 1;
}

static int name_taken(const char *name)
{
    for (uint32_t i = 0; i < name_count; i++)
        if (memcmp(names[i], name, UBFS_DIRENT_NAME) == 0)
            return 1;
    return 0;
}

/* Should entry `de` stay: a valid, new name for a file inode no earlier entry names? */
static int entry_ok(const struct ubfs_dirent *de)
{
    struct inode ip;

    if (de->inum <= UBFS_ROOT_INODE || de->inum >= sb.inode_count || bit(named, de->inum))
        return 0;
    if (!name_ok(de->name) || name_taken(de->name))
        return 0;
    return iget(de->inum, &ip) == 0 && ip.d.type == UBFS_TYPE_FILE;
}

/* Keep or clear every used entry of one directory block (count entries lie in size). */
static void check_entries(struct buf *bp, uint32_t count)
{
    struct ubfs_dirent *de = (struct ubfs_dirent *)bp->data;

    for (uint32_t i = 0; i < count && !io_failed; i++) {
        if (de[i].inum == 0)
            continue;
        if (entry_ok(&de[i])) {
            set_bit(named, de[i].inum);
            memcpy(names[name_count++], de[i].name, UBFS_DIRENT_NAME);
            continue;
        }
        memset(&de[i], 0, sizeof de[i]); /* whole, as dirunlink clears an entry */
        bdirty(bp);
        fixes.entries++;
    }
}

/* ---- pointers ------------------------------------------------------------------------ */

/* Does any pointer of the inode lie outside the data area (corruption, not a crash)? */
static int slot_corrupt(uint32_t addr, int level)
{
    if (addr == 0)
        return 0;
    if (!is_data_block(addr))
        return 1;
    if (level == 0)
        return 0;
    struct buf *bp = bread(addr);
    if (bp == 0)
        return 1;
    int bad = 0;
    for (uint32_t i = 0; i < NINDIRECT && !bad; i++)
        bad = slot_corrupt(((uint32_t *)bp->data)[i], level - 1);
    brelse(bp);
    return bad;
}

static int inode_corrupt(const struct inode *ip)
{
    for (uint32_t i = 0; i < NDIRECT; i++)
        if (slot_corrupt(ip->d.direct[i], 0))
            return 1;
    return slot_corrupt(ip->d.indirect, 1) || slot_corrupt(ip->d.double_indirect, 2);
}

/* The last block of a file whose size ends inside it: zero the bytes past the size. A
 * directory block's entries are checked too (`dir`), those past the size cleared. */
static void data_block(struct inode *ip, uint32_t addr, uint64_t index, int dir)
{
    uint64_t start = index * BSIZE;
    uint64_t end = min_u64(ip->d.size - start, BSIZE); /* bytes of the file in it */

    if (end == BSIZE && !dir)
        return;
    struct buf *bp = bread(addr);
    if (bp == 0)
        return;
    if (dir)
        check_entries(bp, (uint32_t)(end / UBFS_DIRENT_SIZE));
    for (uint64_t i = end; i < BSIZE; i++) {
        if (bp->data[i] != 0) {
            memset(bp->data + end, 0, BSIZE - end);
            bdirty(bp);
            fixes.tails++;
            break;
        }
    }
    brelse(bp);
}

/* Walk the pointer at *slot (in the inode, or in table `owner`), which covers file
 * blocks from `first` on: drop what lies past the file's size, mark what stays used. */
static void walk(struct inode *ip, struct buf *owner, uint32_t *slot, int level, uint64_t first,
                 int dir)
{
    static const uint64_t covers[3] = {1, NINDIRECT, (uint64_t)NINDIRECT * NINDIRECT};
    uint64_t span = (ip->d.size + BSIZE - 1) / BSIZE;
    uint32_t addr = *slot;

    if (addr == 0 || io_failed || !is_data_block(addr))
        return; /* a hole, or corruption left for the requests to report */
    if (first >= span) { /* all of it past the end: drop it (the bitmap frees it) */
        *slot = 0;
        if (owner)
            bdirty(owner);
        else
            ip->dirty = 1;
        fixes.pointers++;
        return;
    }
    set_bit(bitmap, addr);
    if (level == 0) {
        data_block(ip, addr, first, dir);
        return;
    }
    struct buf *bp = bread(addr);
    if (bp == 0)
        return;
    for (uint32_t i = 0; i < NINDIRECT; i++)
        walk(ip, bp, &((uint32_t *)bp->data)[i], level - 1, first + i * covers[level - 1], dir);
    brelse(bp);
}

/* Walk every pointer of a used inode and write it back if anything changed. */
static void walk_inode(struct inode *ip, int dir)
{
    uint64_t size = ip->d.size;

    /* A file with a pointer outside the data area is left as it is for its requests
     * to report (FS_EIO), but its valid blocks stay marked: walking it as the largest
     * file trims nothing and reads no entry or tail. */
    int corrupt = inode_corrupt(ip);
    if (corrupt)
        ip->d.size = MAXFILE_BYTES;
    for (uint32_t i = 0; i < NDIRECT; i++)
        walk(ip, 0, &ip->d.direct[i], 0, i, dir && !corrupt);
    walk(ip, 0, &ip->d.indirect, 1, NDIRECT, dir && !corrupt);
    walk(ip, 0, &ip->d.double_indirect, 2, NDIRECT + NINDIRECT, dir && !corrupt);
    ip->d.size = size;
    iupdate(ip);
}

/* ---- the pass ------------------------------------------------------------------------- */

/* Every inode but the root: unnamed files freed, named ones walked. */
static void check_inodes(void)
{
    for (uint32_t inum = UBFS_ROOT_INODE + 1; inum < sb.inode_count && !io_failed; inum++) {
        struct inode ip;
        if (iget(inum, &ip) < 0 || ip.d.type != UBFS_TYPE_FILE)
            continue;
        if (!bit(named, inum)) {
            memset(&ip.d, 0, sizeof ip.d);
            ip.dirty = 1;
            iupdate(&ip);
            fixes.inodes++;
            continue;
        }
        if (ip.d.nlink != 1) {
            ip.d.nlink = 1;
            ip.dirty = 1;
            fixes.links++;
        }
        walk_inode(&ip, 0);
    }
}

/* Write the bitmap as it must be, block by block, where it differs from the device. */
static void write_bitmap(void)
{
    for (uint32_t b = 0; b < sb.data_start; b++)
        set_bit(bitmap, b);
    for (uint32_t i = 0; i < sb.bitmap_blocks && !io_failed; i++) {
        struct buf *bp = bread(sb.bitmap_start + i);
        if (bp == 0)
            return;
        const uint8_t *want = bitmap + (uint64_t)i * BSIZE;
        if (memcmp(bp->data, want, BSIZE) != 0) {
            for (uint32_t k = 0; k < BSIZE; k++) /* bits counted in differing bytes only */
                for (uint8_t diff = bp->data[k] ^ want[k]; diff != 0; diff &= diff - 1)
                    fixes.bits++;
            memcpy(bp->data, want, BSIZE);
            bdirty(bp);
        }
        brelse(bp);
    }
}

int recover(struct recovery *out)
{
    if (sb.inode_count > RECOVER_MAX_INODES || sb.bitmap_blocks > RECOVER_MAX_BITMAP)
        return -1;
    memset(named, 0, sizeof named);
    memset(bitmap, 0, sizeof bitmap);
    memset(&fixes, 0, sizeof fixes);
    name_count = 0;
    io_failed = 0;

    struct inode root;
    if (iget(UBFS_ROOT_INODE, &root) < 0 || root.d.type != UBFS_TYPE_DIR)
        return -1;
    if (inode_corrupt(&root)) { /* no crash makes this: leave it to the requests */
        out->skipped = 1;
        return io_failed ? -1 : 0;
    }
    walk_inode(&root, 1); /* entries first: they say which files exist */
    check_inodes();
    write_bitmap();
    bflush();
    *out = fixes;
    return io_failed ? -1 : 0;
}
