/* ub_ipc.h: synchronous IPC between a client and a server (guest/runtime/ipc.c).
 *
 * A server registers a named service and loops in ub_ipc_serve, which calls its
 * handler once per request. A client connects to the service by name and makes calls;
 * each call carries four message registers (mr) each way, and larger data goes through
 * the connection's shared buffer, which the kernel maps into both sides at the same
 * address.
 */
#ifndef UB_IPC_H
#define UB_IPC_H

#include "ub.h"

/* One request, as the server's handler sees it. The handler overwrites mr[] with the
 * reply. The layout is fixed (offsets 0, 8, 16..40): a kernel that enters the handler
 * directly through a gate builds this struct itself. */
struct ub_msg {
    long badge; /* kernel-assigned, unforgeable identity of the calling connection */
    void *buf;  /* the connection's shared buffer, as mapped in the server */
    long mr[4]; /* request in, reply out */
};

typedef void (*ub_ipc_handler)(struct ub_msg *msg);

/* A close notification (abi/message.py CLOSED_OP): the handler is called with
 * mr[0] == UB_IPC_CLOSED, buf == NULL and badge == the connection that closed (its
 * client closed it or ended). Release what the server held for that badge; the reply is
 * discarded. Real calls always have a buffer; a client sending UB_IPC_CLOSED itself
 * names only its own badge. No protocol may use this value as an operation, and every
 * handler must expect it (one that holds nothing per client just ignores it). */
#define UB_IPC_CLOSED (-1L)

/* Offer a service under `name` (the handler's address is recorded by the kernel).
 * Returns the service slot (RECV), or -UB_Exxx (-UB_EEXIST if the name is taken). */
long ub_ipc_register(const char *name, ub_ipc_handler handler);

/* Receive requests on `service` forever, calling `handler` for each and replying with
 * the mr[] it leaves. Exits the program with status 1 if the kernel reports an error. */
void ub_ipc_serve(long service, ub_ipc_handler handler) __attribute__((noreturn));

/* A client's end of a connection. */
struct ub_conn {
    long slot;              /* connection cap (CALL) */
    void *buf;              /* the shared buffer */
    unsigned long buf_size; /* its size in bytes */
    unsigned long gate;     /* the kernel-generated gate to call, or 0: use IPC_CALL */
    const char *name;       /* the service's name (ub_ipc_reconnect); must outlive conn */
};

/* Connect to the service called `name`; fills *conn. Returns 0, or -UB_Exxx
 * (-UB_ESRCH if no such service). */
long ub_ipc_connect(const char *name, struct ub_conn *conn);

/* Like ub_ipc_connect, but yields and tries again while no service has that name yet
 * (its server is still starting). */
long ub_ipc_connect_when_up(const char *name, struct ub_conn *conn);

/* After -UB_EPIPE (the server is gone; a supervisor may be restarting it): connect to
 * the same service name again, waiting while no server has it, copy the old buffer's
 * contents into the new one (the old buffer stays mapped until its connection is
 * closed), then close the old connection. Returns 0 with *conn updated (its buf moves),
 * or -UB_Exxx with *conn unchanged. */
long ub_ipc_reconnect(struct ub_conn *conn);

/* How many times ub_ipc_call_retry reconnects for one request. */
#define UB_IPC_RETRIES 8

/* Send mr[0..3] and block for the reply. Returns 0 with the reply in mr[0..3], or
 * -UB_Exxx with mr[] untouched (-UB_EPIPE if the server is gone).
 * Inline, like seL4's seL4_Call: the fast path is a few register moves and one
 * `call *gate` (an in-kernel caller of an in-kernel server) or one `syscall`; the same
 * binary takes whichever the kernel set up at connect time. */
static inline long ub_ipc_call(const struct ub_conn *conn, long mr[4])
{
    long ret;
    if (conn->gate) {
        /* The gate's convention (bridge/gate.py): mr in RSI/RDI/R8/R9 both ways;
         * it preserves RBX, RBP, R12-R15 and RSP and zeroes R10/R11. The layout is
         * abi/message.py's; tests/abi/test_message_layout.py checks this code. */
        register long rsi __asm__("rsi") = mr[0];
        register long rdi __asm__("rdi") = mr[1];
        register long r8 __asm__("r8") = mr[2];
        register long r9 __asm__("r9") = mr[3];
        __asm__ volatile("call *%[gate]"
                         : "=a"(ret), "+r"(rsi), "+r"(rdi), "+r"(r8), "+r"(r9)
                         : [gate] "r"(conn->gate)
                         : "rcx", "rdx", "r10", "r11", "memory", "cc");
        if (ret < 0)
            return ret;
        mr[0] = rsi;
        mr[1] = rdi;
        mr[2] = r8;
        mr[3] = r9;
        return 0;
    }
    /* IPC_CALL: mr in RSI/RDX/R10/R8 both ways (abi/message.py SENT, REPLIED). */
    long rsi = mr[0];
    long rdx = mr[1];
    register long r10 __asm__("r10") = mr[2];
    register long r8 __asm__("r8") = mr[3];
    __asm__ volatile("syscall"
                     : "=a"(ret), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8)
                     : "a"(UB_SYS_IPC_CALL), "D"(conn->slot)
                     : "rcx", "r11", "memory");
    if (ret < 0)
        return ret;
    mr[0] = rsi;
    mr[1] = rdx;
    mr[2] = r10;
    mr[3] = r8;
    return 0;
}

/* After ub_ipc_call returned `r` < 0: if r is -UB_EPIPE, reconnect and send the same
 * request again (at most UB_IPC_RETRIES times); the final status. Out of line. */
long ub_ipc_retry(struct ub_conn *conn, long mr[4], long r);

/* ub_ipc_call, and on -UB_EPIPE reconnect and send the same request again. Only for
 * requests the protocol declares retriable: executing one twice has the effect of
 * executing it once (idempotent), and the server does not change the request's data
 * in the buffer before it replies. Costs a successful call nothing beyond ub_ipc_call:
 * the retry is behind the error branch every caller has anyway. */
static inline long ub_ipc_call_retry(struct ub_conn *conn, long mr[4])
{
    long r = ub_ipc_call(conn, mr);
    if (r < 0)
        r = ub_ipc_retry(conn, mr, r);
    return r;
}

#endif
