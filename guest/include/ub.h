/* ub.h: the runtime API of underbridge guest programs.
 *
 * Guests are static, freestanding x86-64 programs: no libc, no dynamic loader. They
 * talk to the kernel only through the `syscall` instruction, with the Linux x86-64
 * register convention:
 *
 *   number in RAX; arguments in RDI, RSI, RDX, R10, R8, R9; result in RAX
 *   (negative -UB_Exxx on error). The CPU clobbers RCX (return RIP) and R11 (RFLAGS).
 *
 * The syscall stubs below are inline; everything else lives in guest/runtime/ublib.c,
 * which the toolchain links into every program together with crt0.S.
 *
 * Only the freestanding headers gcc ships itself (stddef.h, stdarg.h) are used here.
 */
#ifndef UB_H
#define UB_H

#include <stdarg.h>
#include <stddef.h>

#include "ub_syscall.h"

/* ---- raw syscalls ------------------------------------------------------------ */

static inline long ub_syscall0(long n)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n) : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall1(long n, long a1)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a1) : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall2(long n, long a1, long a2)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall3(long n, long a1, long a2, long a3)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall4(long n, long a1, long a2, long a3, long a4)
{
    register long r10 __asm__("r10") = a4;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall5(long n, long a1, long a2, long a3, long a4, long a5)
{
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long ub_syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6)
{
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* ---- process and console (ublib.c) ------------------------------------------ */

/* Terminate the calling process with `status`. Never returns: should the kernel ever
 * resume the caller, it executes ud2 and faults. crt0.S calls this with main's result. */
void ub_exit(long status) __attribute__((noreturn));

/* Write `len` bytes at `buf` to the console. Returns len, or -UB_Exxx on error. */
long ub_write(const void *buf, unsigned long len);

/* Write the NUL-terminated string `s` to the console. Unlike C's puts, NO newline is
 * appended: ub_puts("a"); ub_puts("b\n"); prints "ab\n". */
void ub_puts(const char *s);

/* A small printf. Conversions: %s %c %d %i %u %x %p %%; %d %i %u %x take the length
 * modifiers l and ll; numbers take a width with optional zero padding ("%08x",
 * "%5d"). Widths are ignored for %s %c %p; %s prints "(null)" for NULL; an unknown
 * conversion is printed verbatim. Output is buffered and flushed through ub_write
 * before returning. Returns the number of bytes written, or the first negative
 * ub_write result. */
int ub_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ub_vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* ---- freestanding helpers (ublib.c) ------------------------------------------
 * gcc emits calls to memcpy, memset, memmove and memcmp even with -ffreestanding
 * (struct copies, large zero-initialisers), so every program links these. memcpy and
 * memset move 8-byte words, 64 bytes a loop iteration: servers copy blocks with them. */

void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ---- argument helpers (ublib.c) ------------------------------------------------ */

/* 1 if the NUL-terminated strings a and b are equal, else 0. */
int ub_streq(const char *a, const char *b);

/* The non-negative decimal s ("0", "42"; no sign, no spaces), or -1 if s is not one or
 * does not fit in a long. */
long ub_parse_count(const char *s);

#endif
