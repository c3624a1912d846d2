/* ublib.c: the out-of-line part of the guest runtime (see ub.h for the API).
 *
 * Built with -ffreestanding -fno-builtin -fno-tree-loop-distribute-patterns: the last
 * flag stops gcc from recognising the copy loops below as memset/memcpy idioms and
 * compiling them into calls to themselves.
 */
#include "ub.h"
#include "ub_sys.h"

/* ---- process and console ----------------------------------------------------- */

void ub_exit(long status)
{
    ub_syscall1(UB_SYS_EXIT, status);
    __builtin_trap(); /* the kernel never resumes an exited process */
}

long ub_write(const void *buf, unsigned long len)
{
    return ub_syscall2(UB_SYS_WRITE, (long)buf, (long)len);
}

void ub_puts(const char *s)
{
    ub_write(s, strlen(s));
}

/* Pack argv into the NUL-separated block SPAWN takes ("a\0bc\0"), on the stack so
 * concurrent threads need no lock. */
long ub_spawn(const char *name, const char *const argv[])
{
    char block[UB_SPAWN_ARGS_MAX];
    unsigned long len = 0;

    for (; argv && *argv; argv++) { /* NULL argv: no arguments */
        unsigned long n = strlen(*argv) + 1; /* with its NUL */
        if (n > sizeof(block) - len)
            return -UB_EINVAL;
        memcpy(block + len, *argv, n);
        len += n;
    }
    return ub_spawn_raw(name, strlen(name), block, len);
}

/* ---- printf -------------------------------------------------------------------
 * Output goes into a small stack buffer, flushed when full and at the end, so a
 * typical call costs one write syscall. */

#define UB_OUT_CAP 128

struct ub_out {
    char buf[UB_OUT_CAP];
    unsigned long len; /* bytes pending in buf */
    long total;        /* bytes accepted so far, or the first negative ub_write result */
};

static void out_flush(struct ub_out *o)
{
    if (o->len == 0)
        return;
    long r = ub_write(o->buf, o->len);
    if (r < 0 && o->total >= 0)
        o->total = r;
    o->len = 0;
}

static void out_char(struct ub_out *o, char c)
{
    if (o->len == UB_OUT_CAP)
        out_flush(o);
    o->buf[o->len++] = c;
    if (o->total >= 0)
        o->total++;
}

static void out_str(struct ub_out *o, const char *s)
{
    while (*s)
        out_char(o, *s++);
}

static void out_repeat(struct ub_out *o, char c, int n)
{
    for (; n > 0; n--)
        out_char(o, c);
}

/* Print `v` in `base` (10 or 16), with a leading '-' if `negative`, right-aligned in
 * `width` columns padded with `pad` (' ' or '0'; zeros go after the sign). */
static void out_number(struct ub_out *o, unsigned long long v, unsigned base, int negative,
                       int width, char pad)
{
    char digits[24]; /* 2^64 has 20 decimal digits */
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v != 0);

    int fill = width - n - (negative ? 1 : 0);
    if (pad == ' ')
        out_repeat(o, ' ', fill);
    if (negative)
        out_char(o, '-');
    if (pad == '0')
        out_repeat(o, '0', fill);
    while (n > 0)
        out_char(o, digits[--n]);
}

enum ub_len { UB_LEN_INT, UB_LEN_LONG, UB_LEN_LLONG };

static long long arg_signed(va_list *ap, enum ub_len len)
{
    switch (len) {
    case UB_LEN_LLONG: return va_arg(*ap, long long);
    case UB_LEN_LONG: return va_arg(*ap, long);
    default: return va_arg(*ap, int);
    }
}

static unsigned long long arg_unsigned(va_list *ap, enum ub_len len)
{
    switch (len) {
    case UB_LEN_LLONG: return va_arg(*ap, unsigned long long);
    case UB_LEN_LONG: return va_arg(*ap, unsigned long);
    default: return va_arg(*ap, unsigned int);
    }
}

/* Format one conversion whose spec starts at `*fmt` (just after the '%');
 * returns the position after it. */
static const char *out_conversion(struct ub_out *o, const char *fmt, va_list *ap)
{
    char pad = ' ';
    int width = 0;
    enum ub_len len = UB_LEN_INT;

    if (*fmt == '0') {
        pad = '0';
        fmt++;
    }
    for (; *fmt >= '0' && *fmt <= '9'; fmt++) {
        if (width < 4096) /* absurd widths are clamped, never overflow */
            width = width * 10 + (*fmt - '0');
    }
    if (*fmt == 'l') {
        len = UB_LEN_LONG;
        if (*++fmt == 'l') {
            len = UB_LEN_LLONG;
            fmt++;
        }
    }

    switch (*fmt) {
    case 'd':
    case 'i': {
        long long v = arg_signed(ap, len);
        unsigned long long mag = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        out_number(o, mag, 10, v < 0, width, pad);
        break;
    }
    case 'u': out_number(o, arg_unsigned(ap, len), 10, 0, width, pad); break;
    case 'x': out_number(o, arg_unsigned(ap, len), 16, 0, width, pad); break;
    case 'p':
        out_str(o, "0x");
        out_number(o, (unsigned long long)(unsigned long)va_arg(*ap, void *), 16, 0, 0, ' ');
        break;
    case 'c': out_char(o, (char)va_arg(*ap, int)); break;
    case 's': {
        const char *s = va_arg(*ap, const char *);
        out_str(o, s ? s : "(null)");
        break;
    }
    case '%': out_char(o, '%'); break;
    case '\0':
        out_char(o, '%'); /* a lone '%' at the end of fmt */
        return fmt;
    default:
        out_char(o, '%');
        out_char(o, *fmt);
        break;
    }
    return fmt + 1;
}

int ub_vprintf(const char *fmt, va_list ap)
{
    struct ub_out o;
    va_list args;

    o.len = 0;
    o.total = 0;
    va_copy(args, ap);
    while (*fmt) {
        if (*fmt == '%')
            fmt = out_conversion(&o, fmt + 1, &args);
        else
            out_char(&o, *fmt++);
    }
    va_end(args);
    out_flush(&o);
    return (int)o.total;
}

int ub_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = ub_vprintf(fmt, ap);
    va_end(ap);
    return r;
}

/* ---- freestanding helpers ------------------------------------------------------ */

/* memcpy and memset move 64 bytes per loop iteration (as a real memcpy does), then
 * words, then bytes: servers copy whole 4 KiB blocks and inodes, and gcc calls these for
 * struct copies. Words go through a type that may alias anything and sit anywhere, so
 * neither end need be aligned.
 *
 * memcpy's definition leaves out ub.h's `restrict` on purpose: with it gcc turns the
 * copy loop into 16-byte SSE moves, about a third fewer instructions per block, which
 * would lower every server's simulated cost. This is the 8-byte loop the fs and ramdisk
 * servers have always used; moving to SSE copies is a cost-model change, for its own
 * commit. (memset's stores are vectorised either way, as the fs server's were.) */
typedef unsigned long __attribute__((may_alias, aligned(1))) any_word;

void *memcpy(void *dst, const void *src, size_t n)
{
    any_word *d = dst;
    const any_word *s = src;

    for (; n >= 64; n -= 64, d += 8, s += 8) {
        d[0] = s[0], d[1] = s[1], d[2] = s[2], d[3] = s[3];
        d[4] = s[4], d[5] = s[5], d[6] = s[6], d[7] = s[7];
    }
    for (; n >= 8; n -= 8)
        *d++ = *s++;
    unsigned char *d8 = (unsigned char *)d;
    const unsigned char *s8 = (const unsigned char *)s;
    while (n--)
        *d8++ = *s8++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if ((unsigned long)d <= (unsigned long)s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    any_word *d = dst;
    unsigned long w = (unsigned char)c * 0x0101010101010101UL; /* c in every byte */

    for (; n >= 64; n -= 64, d += 8)
        d[0] = d[1] = d[2] = d[3] = d[4] = d[5] = d[6] = d[7] = w;
    for (; n >= 8; n -= 8)
        *d++ = w;
    unsigned char *d8 = (unsigned char *)d;
    while (n--)
        *d8++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a;
    const unsigned char *y = b;
    for (; n > 0; n--, x++, y++) {
        if (*x != *y)
            return *x - *y;
    }
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;
    while (*p)
        p++;
    return (size_t)(p - s);
}

/* ---- argument helpers -------------------------------------------------------------- */

int ub_streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

long ub_parse_count(const char *s)
{
    long n = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || n > (0x7fffffffffffffffL - 9) / 10)
            return -1;
        n = n * 10 + (*s - '0');
    }
    return n;
}
