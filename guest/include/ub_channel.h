/* ub_channel.h: Zircon-style channels and ports (abi/syscalls.py documents each call).
 *
 * A channel is two endpoints; a message is bytes plus handles (cap slots with GRANT),
 * which leave the writer's table and enter the reader's. ub_channel_call writes a
 * message whose first 4 bytes the kernel sets to a fresh transaction id and blocks for
 * the reply that carries the same id. Results are as in ub_syscall.h: >= 0, or -UB_Exxx.
 * The calls that also return values in RDI/RSI have their own asm, every register the
 * kernel writes named as an output.
 */
#ifndef UB_CHANNEL_H
#define UB_CHANNEL_H

#include "ub.h"

/* Returns RAX; *rdi and *rsi get what the kernel left in RDI and RSI. */
static inline long ub_channel_syscall(long n, long a1, long a2, long a3, long a4, long a5,
                                      long *rdi, long *rsi)
{
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    long ret;
    long d = a1, s = a2;
    __asm__ volatile("syscall"
                     : "=a"(ret), "+D"(d), "+S"(s), "+r"(r10), "+r"(r8)
                     : "a"(n), "d"(a3)
                     : "rcx", "r11", "memory");
    *rdi = d;
    *rsi = s;
    return ret;
}

/* Create a channel: 0 with its endpoints' slots in *a and *b, or -UB_Exxx. */
static inline long ub_channel_create(long *a, long *b)
{
    long other, unused;
    long r = ub_channel_syscall(UB_SYS_CHANNEL_CREATE, 0, 0, 0, 0, 0, &other, &unused);
    if (r < 0)
        return r;
    *a = r;
    *b = other;
    return 0;
}

static inline long ub_channel_write(long slot, const void *bytes, unsigned long num_bytes,
                                    const long *handles, unsigned long num_handles)
{
    return ub_syscall5(UB_SYS_CHANNEL_WRITE, slot, (long)bytes, (long)num_bytes, (long)handles,
                       (long)num_handles);
}

/* Bytes read (and *num_handles), or -UB_EAGAIN / -UB_EPIPE / -UB_EMSGSIZE / ... */
static inline long ub_channel_read(long slot, void *bytes, unsigned long bytes_cap,
                                   long *handles, unsigned long handles_cap,
                                   long *num_handles)
{
    long unused;
    return ub_channel_syscall(UB_SYS_CHANNEL_READ, slot, (long)bytes, (long)bytes_cap,
                              (long)handles, (long)handles_cap, num_handles, &unused);
}

/* Reply bytes (and *num_handles), or -UB_Exxx (-UB_EPIPE: the channel closed). */
static inline long ub_channel_call(long slot, const struct ub_channel_call_args *args,
                                   long *num_handles)
{
    long unused;
    return ub_channel_syscall(UB_SYS_CHANNEL_CALL, slot, (long)args, 0, 0, 0, num_handles,
                              &unused);
}

/* The UB_SIGNAL_* bits asserted once one of `signals` is, or -UB_Exxx. */
static inline long ub_object_wait(long slot, unsigned long signals)
{
    return ub_syscall2(UB_SYS_OBJECT_WAIT, slot, (long)signals);
}

static inline long ub_port_create(void) { return ub_syscall0(UB_SYS_PORT_CREATE); }

static inline long ub_object_wait_async(long slot, long port, unsigned long key,
                                        unsigned long signals)
{
    return ub_syscall4(UB_SYS_OBJECT_WAIT_ASYNC, slot, port, (long)key, (long)signals);
}

/* 0 with the packet's key and signals, or -UB_Exxx. */
static inline long ub_port_wait(long port, unsigned long *key, unsigned long *signals)
{
    long k, s;
    long r = ub_channel_syscall(UB_SYS_PORT_WAIT, port, 0, 0, 0, 0, &k, &s);
    if (r == 0) {
        *key = (unsigned long)k;
        *signals = (unsigned long)s;
    }
    return r;
}

#endif
