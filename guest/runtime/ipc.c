/* ipc.c: the IPC library (see ub_ipc.h for the API).
 *
 * IPC_CONNECT, IPC_CALL and IPC_REPLY_WAIT return values in argument registers as
 * well as RAX (abi/syscalls.py), which the generic ub_syscallN stubs cannot express.
 * So each has its own asm with every register named: a register the kernel writes is an
 * in/out ("+") or output ("=") operand, never a plain input, or gcc would assume it
 * still holds what it put there. r8-r10 have no constraint letter, hence the
 * `register ... __asm__("r10")` variables.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

/* ---- raw syscalls ------------------------------------------------------------------ */

static long sys_ipc_connect(const char *name, unsigned long len, void **buf,
                            unsigned long *size, unsigned long *gate)
{
    long ret;
    long rdi = (long)name;
    long rsi = (long)len;
    unsigned long rdx;
    __asm__ volatile("syscall"
                     : "=a"(ret), "+D"(rdi), "+S"(rsi), "=d"(rdx)
                     : "a"(UB_SYS_IPC_CONNECT)
                     : "rcx", "r11", "memory");
    *buf = (void *)rdi;
    *size = (unsigned long)rsi;
    *gate = rdx;
    return ret;
}


/* The request a REPLY_WAIT brings back: RDI badge, RSI buffer, RDX/R10/R8/R9 mr
 * (abi/message.py DELIVERED; tests/abi/test_message_layout.py checks it). */
static long sys_ipc_reply_wait(long service, struct ub_msg *msg)
{
    long ret;
    long rdi = service;
    long rsi = msg->mr[0];
    long rdx = msg->mr[1];
    register long r10 __asm__("r10") = msg->mr[2];
    register long r8 __asm__("r8") = msg->mr[3];
    register long r9 __asm__("r9");
    __asm__ volatile("syscall"
                     : "=a"(ret), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8),
                       "=r"(r9)
                     : "a"(UB_SYS_IPC_REPLY_WAIT)
                     : "rcx", "r11", "memory");
    msg->badge = rdi;
    msg->buf = (void *)rsi;
    msg->mr[0] = rdx;
    msg->mr[1] = r10;
    msg->mr[2] = r8;
    msg->mr[3] = r9;
    return ret;
}

/* ---- server ---------------------------------------------------------------------- */

long ub_ipc_register(const char *name, ub_ipc_handler handler)
{
    return ub_syscall3(UB_SYS_IPC_REGISTER, (long)name, (long)strlen(name), (long)handler);
}

void ub_ipc_serve(long service, ub_ipc_handler handler)
{
    /* The first REPLY_WAIT has no caller to reply to: the kernel ignores the reply
     * registers then, so the zeroed mr[] are never seen. */
    struct ub_msg msg = {0};

    for (;;) {
        long r = sys_ipc_reply_wait(service, &msg);
        if (r < 0) {
            ub_printf("ub_ipc_serve: reply_wait on service %ld failed: %ld\n", service, r);
            ub_exit(1);
        }
        handler(&msg); /* leaves the reply in msg.mr[] for the next REPLY_WAIT */
    }
}

/* ---- client ---------------------------------------------------------------------- */

long ub_ipc_connect(const char *name, struct ub_conn *conn)
{
    void *buf;
    unsigned long size, gate;
    long slot = sys_ipc_connect(name, strlen(name), &buf, &size, &gate);
    if (slot < 0)
        return slot;
    conn->slot = slot;
    conn->buf = buf;
    conn->buf_size = size;
    conn->gate = gate;
    conn->name = name;
    return 0;
}

long ub_ipc_connect_when_up(const char *name, struct ub_conn *conn)
{
    long r;
    while ((r = ub_ipc_connect(name, conn)) == -UB_ESRCH)
        ub_yield();
    return r;
}

/* ---- recovery (off the fast path: only after a call returned an error) --------------- */

long ub_ipc_reconnect(struct ub_conn *conn)
{
    struct ub_conn fresh;
    long r = ub_ipc_connect_when_up(conn->name, &fresh);
    if (r < 0)
        return r;
    unsigned long n = conn->buf_size < fresh.buf_size ? conn->buf_size : fresh.buf_size;
    memcpy(fresh.buf, conn->buf, n); /* the request's data, if it has any */
    ub_cap_delete(conn->slot);       /* closes the old connection, unmapping its buffer */
    *conn = fresh;
    return 0;
}

long ub_ipc_retry(struct ub_conn *conn, long mr[4], long r)
{
    for (int tries = 0; r == -UB_EPIPE && tries < UB_IPC_RETRIES; tries++) {
        r = ub_ipc_reconnect(conn);
        if (r < 0)
            return r;
        r = ub_ipc_call(conn, mr);
    }
    return r;
}
