/* fstest: a client of the file-system server (ub_fs.h), and its test driver.
 *
 * usage: fstest write NAME SIZE SEED   (re)write NAME with SIZE bytes of pattern SEED;
 *                                      prints "fstest: wrote NAME SIZE"
 *        fstest read NAME              prints "fstest: read NAME SIZE FNV" (FNV: the
 *                                      content's FNV-1a-64, 16 hex digits)
 *        fstest suite                  a self-checking sequence over two connections;
 *                                      prints "fstest: ok", or one "fstest: FAIL ..."
 *                                      line per failed check
 *
 * A file written with SEED holds pattern_word(SEED, k) below at bytes 8k .. 8k+7;
 * tests/fs recompute it in Python, so the two must stay in step. Exit status: 0 if all
 * went well, 1 if not, 2 for bad usage. Data moves through the connection's shared
 * buffer, at most UB_IPC_BUFFER_SIZE bytes per call, so anything larger takes several
 * calls. The suite expects to have the fs server to itself: it counts free blocks and
 * inodes before and after, and ends with both where they started.
 */
#include <stdint.h>

#include "ub.h"
#include "ub_ipc.h"
#include "ub_fs.h"

#define CHUNK UB_IPC_BUFFER_SIZE
#define BLOCK 4096
#define DIRECT_BYTES (12L * BLOCK)           /* past this: the indirect block */
#define DOUBLE_BYTES ((12L + 1024L) * BLOCK) /* past this: double indirect */
#define FNV_OFFSET 0xcbf29ce484222325UL
#define FNV_PRIME 0x100000001b3UL

static int failures;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            failures++;                                                                 \
            ub_printf("fstest: FAIL line %d: %s\n", __LINE__, #cond);                   \
        }                                                                               \
    } while (0)

#define CHECK_EQ(expr, want)                                                            \
    do {                                                                                \
        long got_ = (expr), want_ = (want);                                             \
        if (got_ != want_) {                                                            \
            failures++;                                                                 \
            ub_printf("fstest: FAIL line %d: %s = %ld, want %ld\n", __LINE__, #expr,     \
                      got_, want_);                                                     \
        }                                                                               \
    } while (0)

/* ---- helpers -------------------------------------------------------------------------- */

/* Files are written and checked 8 bytes at a time (byte by byte, the client's loops would
 * cost more than the servers' work); the type may alias anything and sit anywhere. */
typedef uint64_t __attribute__((may_alias, aligned(1))) any_u64;

/* Word k (bytes 8k .. 8k+7, little-endian) of a file written with `seed`
 * (tests/fs/test_fs_server.py: pattern()). The multiplier is odd, so words differ for
 * every k: a block read from the wrong place never matches. */
static uint64_t pattern_word(long seed, uint64_t k)
{
    return (k ^ ((uint64_t)seed << 40)) * 0x9e3779b97f4a7c15UL;
}

static uint8_t pattern_byte(long seed, uint64_t i)
{
    return (uint8_t)(pattern_word(seed, i >> 3) >> (i % 8 * 8));
}

/* Bytes off .. off+n-1 of the file written with `seed` (seed < 0: zeros) into dst. */
static void fill(uint8_t *dst, uint64_t off, uint64_t n, long seed)
{
    uint64_t i = 0;

    for (; i < n && (off + i) % 8; i++)
        dst[i] = seed < 0 ? 0 : pattern_byte(seed, off + i);
    for (; i + 8 <= n; i += 8)
        *(any_u64 *)(dst + i) = seed < 0 ? 0 : pattern_word(seed, (off + i) / 8);
    for (; i < n; i++)
        dst[i] = seed < 0 ? 0 : pattern_byte(seed, off + i);
}

/* The index of the first byte where a and b differ, or n. */
static uint64_t mismatch(const uint8_t *a, const uint8_t *b, uint64_t n)
{
    uint64_t i = 0;

    while (i + 8 <= n && *(const any_u64 *)(a + i) == *(const any_u64 *)(b + i))
        i += 8;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* One fs call: reply mr[0] (0 or -FS_Exxx), mr[1..3] in out; an IPC failure is
 * returned as is (-UB_Exxx). */
static long call(const struct ub_conn *c, long op, long a1, long a2, long a3, long out[3])
{
    long mr[4] = {op, a1, a2, a3};
    long r = ub_ipc_call(c, mr);

    if (r < 0)
        return r;
    if (out) {
        out[0] = mr[1];
        out[1] = mr[2];
        out[2] = mr[3];
    }
    return mr[0];
}

/* A call naming a file: the name goes into the shared buffer first. */
static long named(const struct ub_conn *c, long op, long a1, const char *name, long out[3])
{
    unsigned long n = strlen(name) + 1;

    if (n > c->buf_size)
        return -FS_ENAMETOOLONG;
    memcpy(c->buf, name, n);
    return call(c, op, a1, 0, 0, out);
}

/* Open name; the handle (or the error) is returned, the size in *size. */
static long fs_open(const struct ub_conn *c, const char *name, long flags, long *size)
{
    long out[3];
    long r = named(c, FS_OPEN, flags, name, out);

    if (r < 0)
        return r;
    if (size)
        *size = out[1];
    return out[0];
}

static long fs_size(const struct ub_conn *c, long h)
{
    long out[3];
    long r = call(c, FS_SIZE, h, 0, 0, out);
    return r < 0 ? r : out[0];
}

/* {exists, size} of name as FS_ACCESS says, packed as exists ? size : -1. */
static long fs_access(const struct ub_conn *c, const char *name)
{
    long out[3];
    long r = named(c, FS_ACCESS, 0, name, out);

    if (r < 0)
        return r - 1000; /* distinct from "missing" */
    return out[0] ? out[1] : -1;
}

static long free_blocks(const struct ub_conn *c)
{
    long out[3];
    return call(c, FS_STATFS, 0, 0, 0, out) < 0 ? -1 : out[1];
}

static long free_inodes(const struct ub_conn *c)
{
    long out[3];
    return call(c, FS_STATFS, 0, 0, 0, out) < 0 ? -1 : out[2];
}

/* Write len bytes of pattern `seed` at off (the file's bytes off .. off+len-1), in calls
 * of at most `chunk` bytes. Returns 0 or the first error. */
static long write_pattern(const struct ub_conn *c, long h, uint64_t off, uint64_t len,
                          long seed, uint64_t chunk)
{
    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < chunk ? len - done : chunk;
        fill(c->buf, off + done, n, seed);
        long out[3];
        long r = call(c, FS_WRITE, h, (long)(off + done), (long)n, out);
        if (r < 0)
            return r;
        if (out[0] != (long)n)
            return -FS_EIO;
        done += n;
    }
    return 0;
}

/* Read len bytes at off in calls of `chunk` bytes and compare with pattern `seed`
 * (seed < 0: zeros). Returns 0, the first error, or 1 for a short read or a wrong byte
 * (printed). */
static long check_pattern(const struct ub_conn *c, long h, uint64_t off, uint64_t len,
                          long seed, uint64_t chunk)
{
    static uint8_t want[CHUNK];
    const uint8_t *buf = c->buf;

    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < chunk ? len - done : chunk;
        long out[3];
        long r = call(c, FS_READ, h, (long)(off + done), (long)n, out);
        if (r < 0)
            return r;
        if (out[0] != (long)n) {
            ub_printf("fstest: short read at %lu: %ld of %lu\n", off + done, out[0], n);
            return 1;
        }
        fill(want, off + done, n, seed);
        uint64_t i = mismatch(buf, want, n);
        if (i < n) {
            ub_printf("fstest: byte %lu is %u, want %u\n", off + done + i, buf[i], want[i]);
            return 1;
        }
        done += n;
    }
    return 0;
}

/* ---- write and read ------------------------------------------------------------------- */

static int cmd_write(const struct ub_conn *c, const char *name, long size, long seed)
{
    long h = fs_open(c, name, FS_O_CREATE, 0);

    if (h < 0) {
        ub_printf("fstest: cannot open %s: %ld\n", name, h);
        return 1;
    }
    long r = call(c, FS_TRUNCATE, h, 0, 0, 0);
    if (r == 0)
        r = write_pattern(c, h, 0, (uint64_t)size, seed, CHUNK);
    if (r == 0)
        r = call(c, FS_SYNC, h, 0, 0, 0);
    long closed = call(c, FS_CLOSE, h, 0, 0, 0);
    if (r < 0 || closed < 0) {
        ub_printf("fstest: writing %s failed: %ld (close %ld)\n", name, r, closed);
        return 1;
    }
    ub_printf("fstest: wrote %s %ld\n", name, size);
    return 0;
}

static int cmd_read(const struct ub_conn *c, const char *name)
{
    long size;
    long h = fs_open(c, name, 0, &size);
    uint64_t hash = FNV_OFFSET;
    const uint8_t *buf = c->buf;

    if (h < 0) {
        ub_printf("fstest: cannot open %s: %ld\n", name, h);
        return 1;
    }
    for (long done = 0; done < size;) {
        long out[3] = {0, 0, 0};
        long n = size - done < CHUNK ? size - done : CHUNK;
        long r = call(c, FS_READ, h, done, n, out);
        if (r < 0 || out[0] != n) {
            ub_printf("fstest: reading %s at %ld failed: %ld (%ld bytes)\n", name, done, r,
                      out[0]);
            return 1;
        }
        for (long i = 0; i < n; i++)
            hash = (hash ^ buf[i]) * FNV_PRIME;
        done += n;
    }
    call(c, FS_CLOSE, h, 0, 0, 0);
    ub_printf("fstest: read %s %ld %016lx\n", name, size, hash);
    return 0;
}

/* ---- the suite ----------------------------------------------------------------------- */

/* Remove what an earlier run may have left, so the suite starts from known names. */
static void remove_quietly(const struct ub_conn *c, const char *name)
{
    named(c, FS_DELETE, 0, name, 0);
}

static void suite_create(const struct ub_conn *c)
{
    long size = -1;

    CHECK_EQ(fs_open(c, "t-a", 0, 0), -FS_ENOENT);
    CHECK_EQ(fs_access(c, "t-a"), -1);
    long h = fs_open(c, "t-a", FS_O_CREATE | FS_O_EXCL, &size);
    CHECK(h > 0);
    CHECK_EQ(size, 0);
    CHECK_EQ(fs_open(c, "t-a", FS_O_CREATE | FS_O_EXCL, 0), -FS_EEXIST);
    long h2 = fs_open(c, "t-a", FS_O_CREATE, 0);
    CHECK(h2 > 0 && h2 != h);
    CHECK_EQ(fs_access(c, "t-a"), 0);
    CHECK_EQ(call(c, FS_CLOSE, h2, 0, 0, 0), 0);
    CHECK_EQ(call(c, FS_CLOSE, h2, 0, 0, 0), -FS_EBADF); /* closed handles are gone */
    CHECK_EQ(fs_open(c, "t-a", 7, 0), -FS_EINVAL);       /* unknown flags */
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
}

/* Writes at offsets, holes, reads across them, short reads at the end. */
static void suite_offsets(const struct ub_conn *c)
{
    long h = fs_open(c, "t-off", FS_O_CREATE, 0);
    long out[3];

    CHECK(h > 0);
    CHECK_EQ(write_pattern(c, h, 0, 100, 1, CHUNK), 0);
    CHECK_EQ(fs_size(c, h), 100);
    CHECK_EQ(write_pattern(c, h, 10000, 50, 1, CHUNK), 0); /* leaves a hole */
    CHECK_EQ(fs_size(c, h), 10050);
    CHECK_EQ(check_pattern(c, h, 0, 100, 1, 33), 0);
    CHECK_EQ(check_pattern(c, h, 100, 9900, -1, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, 10000, 50, 1, CHUNK), 0);
    CHECK_EQ(write_pattern(c, h, 50, 100, 1, CHUNK), 0); /* overwrite across the old end */
    CHECK_EQ(check_pattern(c, h, 0, 150, 1, CHUNK), 0);
    CHECK_EQ(call(c, FS_READ, h, 10040, 100, out), 0); /* 10 bytes left */
    CHECK_EQ(out[0], 10);
    CHECK_EQ(call(c, FS_READ, h, 20000, 100, out), 0); /* past the end */
    CHECK_EQ(out[0], 0);
    CHECK_EQ(call(c, FS_WRITE, h, 30000, 0, out), 0); /* empty: the size stays */
    CHECK_EQ(fs_size(c, h), 10050);
    CHECK_EQ(call(c, FS_SYNC, h, 0, 0, 0), 0);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-off", 0), 0);
}

/* A file through many calls, into the indirect block, read back in other chunk sizes;
 * a sparse one reaching the double-indirect range. */
static void suite_large(const struct ub_conn *c)
{
    long before = free_blocks(c);
    long h = fs_open(c, "t-big", FS_O_CREATE, 0);
    uint64_t len = DIRECT_BYTES + 3 * CHUNK + 1234;

    CHECK(h > 0);
    CHECK_EQ(write_pattern(c, h, 1000, len, 2, CHUNK), 0); /* unaligned start */
    CHECK_EQ(fs_size(c, h), (long)(1000 + len));
    CHECK_EQ(check_pattern(c, h, 0, 1000, -1, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, 1000, len, 2, 7000), 0); /* chunks across blocks */
    /* aligned rewrite of the middle with another pattern, whole blocks */
    CHECK_EQ(write_pattern(c, h, 8 * BLOCK, 6 * BLOCK, 3, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, 8 * BLOCK, 6 * BLOCK, 3, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, 14 * BLOCK, 1000 + len - 14 * BLOCK, 2, CHUNK), 0);

    /* shrink to the middle of a block: the tail reads as zeros when the file grows */
    CHECK_EQ(call(c, FS_TRUNCATE, h, 5 * BLOCK + 10, 0, 0), 0);
    CHECK_EQ(fs_size(c, h), 5 * BLOCK + 10);
    CHECK_EQ(call(c, FS_TRUNCATE, h, 9 * BLOCK, 0, 0), 0);
    CHECK_EQ(fs_size(c, h), 9 * BLOCK);
    CHECK_EQ(check_pattern(c, h, 1000, 5 * BLOCK + 10 - 1000, 2, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, 5 * BLOCK + 10, 4 * BLOCK - 10, -1, CHUNK), 0);

    /* sparse: a few bytes past the double-indirect boundary */
    long used = before - free_blocks(c);
    CHECK_EQ(write_pattern(c, h, DOUBLE_BYTES + 5000, 3000, 4, CHUNK), 0);
    CHECK_EQ(fs_size(c, h), DOUBLE_BYTES + 8000);
    CHECK_EQ(check_pattern(c, h, DOUBLE_BYTES + 5000, 3000, 4, CHUNK), 0);
    CHECK_EQ(check_pattern(c, h, DOUBLE_BYTES - CHUNK, CHUNK + 5000, -1, CHUNK), 0);
    /* 1 data block, the double-indirect block and one table below it */
    CHECK_EQ(before - free_blocks(c) - used, 3);
    CHECK_EQ(call(c, FS_TRUNCATE, h, 9 * BLOCK, 0, 0), 0);
    CHECK_EQ(before - free_blocks(c), used);

    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-big", 0), 0);
    CHECK_EQ(free_blocks(c), before);
}

/* Open files cannot be deleted; delete and access by name. */
static void suite_delete(const struct ub_conn *c)
{
    long h = fs_open(c, "t-del", FS_O_CREATE, 0);

    CHECK(h > 0);
    CHECK_EQ(write_pattern(c, h, 0, 5000, 5, CHUNK), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-del", 0), -FS_EBUSY);
    CHECK_EQ(fs_access(c, "t-del"), 5000);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-del", 0), 0);
    CHECK_EQ(fs_access(c, "t-del"), -1);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-del", 0), -FS_ENOENT);
    CHECK_EQ(fs_open(c, "t-del", 0, 0), -FS_ENOENT);
    /* a new file of the same name starts empty */
    long size = -1;
    h = fs_open(c, "t-del", FS_O_CREATE, &size);
    CHECK(h > 0);
    CHECK_EQ(size, 0);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-del", 0), 0);
}

/* SQLite's lock levels between two connections. */
static void suite_locks(const struct ub_conn *a, const struct ub_conn *b)
{
    long out[3];
    long ha = fs_open(a, "t-db", FS_O_CREATE, 0);
    long hb = fs_open(b, "t-db", FS_O_CREATE, 0);

    CHECK(ha > 0 && hb > 0);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_RESERVED, 0, 0), -FS_EINVAL); /* SHARED first */
    CHECK_EQ(call(a, FS_LOCK, ha, 9, 0, 0), -FS_EINVAL);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_SHARED, 0, 0), 0);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_SHARED, 0, 0), 0);
    CHECK_EQ(call(b, FS_CHECK_RESERVED, hb, 0, 0, out), 0);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_RESERVED, 0, 0), 0);
    CHECK_EQ(call(b, FS_CHECK_RESERVED, hb, 0, 0, out), 0);
    CHECK_EQ(out[0], 1);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_RESERVED, 0, 0), -FS_EBUSY);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_PENDING, 0, 0), 0);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_EXCLUSIVE, 0, 0), -FS_EBUSY); /* b reads */
    CHECK_EQ(call(b, FS_UNLOCK, hb, FS_LOCK_NONE, 0, 0), 0);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_SHARED, 0, 0), -FS_EBUSY); /* PENDING */
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_EXCLUSIVE, 0, 0), 0);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_SHARED, 0, 0), -FS_EBUSY);
    CHECK_EQ(call(a, FS_UNLOCK, ha, FS_LOCK_SHARED, 0, 0), 0);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_SHARED, 0, 0), 0);
    CHECK_EQ(call(b, FS_CHECK_RESERVED, hb, 0, 0, out), 0);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(call(a, FS_UNLOCK, ha, FS_LOCK_RESERVED, 0, 0), -FS_EINVAL);
    CHECK_EQ(call(a, FS_LOCK, ha, FS_LOCK_RESERVED, 0, 0), 0);
    CHECK_EQ(call(a, FS_CLOSE, ha, 0, 0, 0), 0); /* closing drops the lock */
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_RESERVED, 0, 0), 0);
    CHECK_EQ(call(b, FS_LOCK, hb, FS_LOCK_EXCLUSIVE, 0, 0), 0);
    CHECK_EQ(call(b, FS_UNLOCK, hb, FS_LOCK_NONE, 0, 0), 0);
    CHECK_EQ(call(b, FS_CLOSE, hb, 0, 0, 0), 0);
    CHECK_EQ(named(a, FS_DELETE, 0, "t-db", 0), 0);
}

/* A handle works only on the connection that opened it; bad handles and arguments. */
static void suite_handles(const struct ub_conn *a, const struct ub_conn *b)
{
    long out[3];
    long ha = fs_open(a, "t-own", FS_O_CREATE, 0);

    CHECK(ha > 0);
    CHECK_EQ(call(b, FS_SIZE, ha, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(b, FS_READ, ha, 0, 10, out), -FS_EBADF);
    CHECK_EQ(call(b, FS_WRITE, ha, 0, 10, out), -FS_EBADF);
    CHECK_EQ(call(b, FS_TRUNCATE, ha, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(b, FS_LOCK, ha, FS_LOCK_SHARED, 0, out), -FS_EBADF);
    CHECK_EQ(call(b, FS_CLOSE, ha, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(a, FS_SIZE, 0, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(a, FS_SIZE, -1, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(a, FS_SIZE, 1L << 40, 0, 0, out), -FS_EBADF);
    CHECK_EQ(call(a, FS_READ, ha, -1, 10, out), -FS_EINVAL);
    CHECK_EQ(call(a, FS_READ, ha, 0, CHUNK + 1, out), -FS_EINVAL);
    CHECK_EQ(call(a, FS_WRITE, ha, 0, -5, out), -FS_EINVAL);
    CHECK_EQ(call(a, FS_WRITE, ha, 0x7fffffffffff0000L, 10, out), -FS_EFBIG);
    CHECK_EQ(call(a, FS_TRUNCATE, ha, -1, 0, out), -FS_EINVAL);
    CHECK_EQ(call(a, FS_TRUNCATE, ha, 1L << 60, 0, out), -FS_EFBIG);
    CHECK_EQ(call(a, 99, 0, 0, 0, out), -FS_EINVAL);
    CHECK_EQ(call(a, 0, 0, 0, 0, out), -FS_EINVAL); /* the request table's bounds */
    CHECK_EQ(call(a, FS_STATFS + 1, 0, 0, 0, out), -FS_EINVAL);
    CHECK_EQ(call(a, -1, 0, 0, 0, out), -FS_EINVAL);
    CHECK_EQ(call(a, 1L << 62, 0, 0, 0, out), -FS_EINVAL);
    CHECK_EQ(call(a, FS_SIZE, ha, 0, 0, out), 0); /* still a's */
    CHECK_EQ(call(a, FS_CLOSE, ha, 0, 0, 0), 0);

    /* the table is finite: EMFILE, then every handle closes */
    long handles[80];
    int n = 0;
    long r = 0;
    while (n < 80 && (r = fs_open(a, "t-own", 0, 0)) > 0)
        handles[n++] = r;
    CHECK_EQ(r, -FS_EMFILE);
    CHECK(n > 0);
    for (int i = 0; i < n; i++)
        CHECK_EQ(call(a, FS_CLOSE, handles[i], 0, 0, 0), 0);
    CHECK_EQ(named(a, FS_DELETE, 0, "t-own", 0), 0);
}

static void suite_names(const struct ub_conn *c)
{
    char longest[FS_NAME_MAX + 1], too_long[FS_NAME_MAX + 2];

    memset(longest, 'n', FS_NAME_MAX);
    longest[FS_NAME_MAX] = '\0';
    memset(too_long, 'n', FS_NAME_MAX + 1);
    too_long[FS_NAME_MAX + 1] = '\0';
    long h = fs_open(c, longest, FS_O_CREATE, 0);
    CHECK(h > 0);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(fs_access(c, longest), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, longest, 0), 0);
    CHECK_EQ(fs_open(c, too_long, FS_O_CREATE, 0), -FS_ENAMETOOLONG);
    CHECK_EQ(fs_access(c, too_long), -FS_ENAMETOOLONG - 1000);
    memset(c->buf, 'x', c->buf_size); /* no NUL anywhere: the server must stop looking */
    CHECK_EQ(call(c, FS_OPEN, FS_O_CREATE, 0, 0, 0), -FS_ENAMETOOLONG);
    CHECK_EQ(fs_open(c, "dir/file", FS_O_CREATE, 0), -FS_EINVAL);
    CHECK_EQ(fs_open(c, "", FS_O_CREATE, 0), -FS_EINVAL);
    CHECK_EQ(fs_open(c, "/", FS_O_CREATE, 0), -FS_EINVAL);
    h = fs_open(c, "/t-slash", FS_O_CREATE, 0); /* a leading '/' is ignored */
    CHECK(h > 0);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(fs_access(c, "t-slash"), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-slash", 0), 0);
}

/* Fill the disk: ENOSPC; deleting the file gives every block back. */
static void suite_full(const struct ub_conn *c)
{
    long before = free_blocks(c), inodes = free_inodes(c);
    long small = fs_open(c, "t-small", FS_O_CREATE, 0);
    long h = fs_open(c, "t-fill", FS_O_CREATE, 0);
    long r = 0;
    uint64_t off = 0;

    CHECK(h > 0 && small > 0);
    CHECK_EQ(free_inodes(c), inodes - 2);
    fill(c->buf, 0, CHUNK, 7);
    while ((r = call(c, FS_WRITE, h, (long)off, CHUNK, 0)) == 0)
        off += CHUNK;
    CHECK_EQ(r, -FS_ENOSPC);
    CHECK(off > 0);
    CHECK(free_blocks(c) <= 2); /* what a table without room for its data gave back */
    CHECK_EQ(write_pattern(c, small, 0, 3 * BLOCK, 6, CHUNK), -FS_ENOSPC);
    CHECK(fs_size(c, h) >= (long)off);
    CHECK_EQ(call(c, FS_CLOSE, h, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-fill", 0), 0);
    CHECK_EQ(write_pattern(c, small, 0, 3 * BLOCK, 6, CHUNK), 0);
    CHECK_EQ(check_pattern(c, small, 0, 3 * BLOCK, 6, CHUNK), 0);
    CHECK_EQ(call(c, FS_CLOSE, small, 0, 0, 0), 0);
    CHECK_EQ(named(c, FS_DELETE, 0, "t-small", 0), 0);
    CHECK_EQ(free_blocks(c), before);
    CHECK_EQ(free_inodes(c), inodes);
}

static int cmd_suite(const struct ub_conn *a)
{
    static const char *const names[] = {"t-a", "t-off", "t-big", "t-del", "t-db",
                                        "t-own", "t-slash", "t-fill", "t-small"};
    struct ub_conn b;
    long r = ub_ipc_connect(FS_SERVICE, &b);

    if (r < 0) {
        ub_printf("fstest: second connection failed: %ld\n", r);
        return 1;
    }
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        remove_quietly(a, names[i]);
    /* t-a gives the root directory its first block before the counts are taken */
    suite_create(a);
    long blocks = free_blocks(a), inodes = free_inodes(a);
    CHECK(blocks > 0 && inodes > 0);
    suite_offsets(a);
    suite_large(a);
    suite_delete(a);
    suite_locks(a, &b);
    suite_handles(a, &b);
    suite_names(a);
    suite_full(a);

    CHECK_EQ(free_blocks(a), blocks); /* nothing leaked */
    CHECK_EQ(free_inodes(a), inodes);
    CHECK_EQ(named(a, FS_DELETE, 0, "t-a", 0), 0);
    if (failures) {
        ub_printf("fstest: %d checks failed\n", failures);
        return 1;
    }
    ub_printf("fstest: ok\n");
    return 0;
}

static int usage(void)
{
    ub_printf("usage: fstest write NAME SIZE SEED | fstest read NAME | fstest suite\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct ub_conn conn;
    long size = 0, seed = 0;
    int write = argc == 5 && ub_streq(argv[1], "write");
    int read = argc == 3 && ub_streq(argv[1], "read");
    int suite = argc == 2 && ub_streq(argv[1], "suite");

    if (write) {
        size = ub_parse_count(argv[3]);
        seed = ub_parse_count(argv[4]);
    }
    if (!(write || read || suite) || size < 0 || seed < 0)
        return usage();
    long r = ub_ipc_connect(FS_SERVICE, &conn);
    if (r < 0) {
        ub_printf("fstest: cannot connect to %s: %ld\n", FS_SERVICE, r);
        return 1;
    }
    if (write)
        return cmd_write(&conn, argv[2], size, seed);
    if (read)
        return cmd_read(&conn, argv[2]);
    return cmd_suite(&conn);
}
