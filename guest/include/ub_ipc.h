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
};

/* Connect to the service called `name`; fills *conn. Returns 0, or -UB_Exxx
 * (-UB_ESRCH if no such service). */
long ub_ipc_connect(const char *name, struct ub_conn *conn);

/* Send mr[0..3] and block for the reply. Returns 0 with the reply in mr[0..3], or
 * -UB_Exxx with mr[] untouched (-UB_EPIPE if the server is gone). */
long ub_ipc_call(const struct ub_conn *conn, long mr[4]);

#endif
