/* dir.c: the root directory, the only directory, and the names requests give.
 *
 *   directory  dirlookup/dirlink/dirunlink: the root's content is an array of
 *              ubfs_dirent, inum 0 marking a free slot (ubfs.h);
 *   names      get_name checks a name in a caller's buffer (length, no '/'); lookup
 *              and create turn a name into a file's inode.
 *
 * A name is a dname: NUL-padded to the whole entry field, so entries compare by memcmp
 * and an unlinked entry is cleared whole (the disk keeps no trace of the name).
 */
#include "fs.h"

/* ---- the root directory ------------------------------------------------------------------ */

/* The inode number of `name` and its entry's offset in *off; 0 if absent. */
static uint32_t dirlookup(const dname name, uint64_t *off)
{
    struct inode dp;

    if (iget(UBFS_ROOT_INODE, &dp) < 0)
        return 0;
    for (uint64_t pos = 0; pos < dp.d.size && !io_failed; pos += BSIZE) {
        uint32_t b = bmap(&dp, pos / BSIZE, 0, 0);
        struct buf *bp = b ? bread(b) : 0;
        if (bp == 0)
            continue; /* a hole holds no entries */
        uint32_t count = (uint32_t)min_u64(DIRENTS_PER_BLOCK, (dp.d.size - pos) / UBFS_DIRENT_SIZE);
        const struct ubfs_dirent *de = (const struct ubfs_dirent *)bp->data;
        for (uint32_t i = 0; i < count; i++) {
            if (de[i].inum != 0 && memcmp(de[i].name, name, UBFS_DIRENT_NAME) == 0) {
                uint32_t inum = de[i].inum;
                *off = pos + (uint64_t)i * UBFS_DIRENT_SIZE;
                brelse(bp);
                return inum;
            }
        }
        brelse(bp);
    }
    return 0;
}

/* The offset of a free entry: the first with inum 0, else the end of the directory. */
static uint64_t dirfree(struct inode *dp)
{
    struct ubfs_dirent de;

    for (uint64_t pos = 0; pos < dp->d.size; pos += UBFS_DIRENT_SIZE) {
        if (readi(dp, (uint8_t *)&de, pos, sizeof de) != sizeof de)
            return pos;
        if (de.inum == 0)
            return pos;
    }
    return dp->d.size;
}

/* Enter name -> inum in the root; -FS_ENOSPC if the directory cannot grow. */
static long dirlink(const dname name, uint32_t inum)
{
    struct inode dp;
    struct ubfs_dirent de;

    if (iget(UBFS_ROOT_INODE, &dp) < 0)
        return -FS_EIO;
    uint64_t off = dirfree(&dp);
    de.inum = inum;
    memcpy(de.name, name, UBFS_DIRENT_NAME);
    if (writei(&dp, (const uint8_t *)&de, off, sizeof de) != sizeof de)
        return -FS_ENOSPC;
    return 0;
}

/* Clear the entry at off (all of it, so the disk keeps no trace of the name). */
void dirunlink(uint64_t off)
{
    struct inode dp;
    struct ubfs_dirent de;

    if (iget(UBFS_ROOT_INODE, &dp) < 0)
        return;
    memset(&de, 0, sizeof de);
    writei(&dp, (const uint8_t *)&de, off, sizeof de);
}

/* ---- names ------------------------------------------------------------------------------- */

/* The name at the start of the buffer, NUL-padded into name. At most FS_NAME_MAX + 2
 * bytes are read (a leading '/', the name, its NUL), so the buffer's end is never near. */
long get_name(const uint8_t *buf, dname name)
{
    const char *s = (const char *)buf;
    uint32_t len = 0;

    if (*s == '/')
        s++;
    memset(name, 0, UBFS_DIRENT_NAME);
    for (; s[len] != '\0'; len++) {
        if (len == FS_NAME_MAX)
            return -FS_ENAMETOOLONG;
        if (s[len] == '/')
            return -FS_EINVAL;
        name[len] = s[len];
    }
    return len == 0 ? -FS_EINVAL : 0;
}

/* The inode of a named file; its directory entry's offset in *off. */
long lookup(const dname name, struct inode *ip, uint64_t *off)
{
    uint32_t inum = dirlookup(name, off);

    if (inum == 0)
        return io_failed ? -FS_EIO : -FS_ENOENT;
    if (iget(inum, ip) < 0)
        return -FS_EIO;
    if (ip->d.type != UBFS_TYPE_FILE) {
        io_failed = 1; /* an entry naming a free inode or the root: corruption */
        return -FS_EIO;
    }
    return 0;
}

/* A new empty file called name. */
long create(const dname name, struct inode *ip)
{
    if (ialloc(ip) < 0)
        return io_failed ? -FS_EIO : -FS_ENOSPC;
    iupdate(ip);
    long r = dirlink(name, ip->inum);
    if (r < 0) { /* no room for the entry: the inode goes back */
        memset(&ip->d, 0, sizeof ip->d);
        ip->dirty = 1;
        iupdate(ip);
    }
    return r;
}
