/* linux_glue.c: the native runtime calls (ub.h) for a program linked against musl.
 *
 * A musl program gets its start-up code, string functions and printf from musl, whose
 * system calls the kernel's Linux personality serves (kernel/linux_abi.py). What musl
 * cannot know about is the native ABI: IPC (ipc.c, linked beside this file) and the
 * console markers benchmarks use. Those go through the native syscalls, which the
 * UB_LINUX_ABI build places above the Linux numbers (ub_syscall.h).
 */
#include <stdio.h>
#include <string.h>

#include "ub.h"

void ub_exit(long status)
{
    fflush(NULL); /* musl's buffered stdout must not be lost */
    ub_syscall1(UB_SYS_EXIT, status);
    __builtin_trap();
}

long ub_write(const void *buf, unsigned long len)
{
    return ub_syscall2(UB_SYS_WRITE, (long)buf, (long)len);
}

void ub_puts(const char *s)
{
    ub_write(s, strlen(s));
}

int ub_vprintf(const char *fmt, va_list ap)
{
    char line[512];
    int n = vsnprintf(line, sizeof line, fmt, ap);
    if (n < 0)
        return n;
    long written = ub_write(line, (unsigned long)n < sizeof line ? (unsigned long)n : sizeof line - 1);
    return written < 0 ? (int)written : n;
}

int ub_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = ub_vprintf(fmt, ap);
    va_end(ap);
    return n;
}
