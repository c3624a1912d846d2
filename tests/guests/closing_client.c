/* closing_client: a test client (tests/regress/test_close_during_a_call.py), not an
 * attack.
 *
 * usage: closing_client MODE [--as-server]   connects to "slow" (slow_server.c),
 * waiting until it is up. MODE "call": one call {0}, prints "next = <status> <mr0>".
 * MODE "close" or "exit": a second thread waits until the server's handler has marked
 * the shared buffer (the call {1} of the first thread is in progress there), then
 * closes the connection (CAP_DELETE; prints "close = <status>") or ends the whole
 * client (exit 3). The first thread prints "call = <status> <mr0>" when its call
 * returns, then "done" once the second thread has closed.
 * --as-server: register a service first (in kernel space under the designs that place
 * servers there, so the calls are server-server).
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define STARTED 0x57a27ed

static struct ub_conn conn;
static volatile long closed;
static int exiting;
static char stack[16384] __attribute__((aligned(16)));

static void nothing(struct ub_msg *msg) { (void)msg; }

static void closer(unsigned long unused)
{
    (void)unused;
    volatile long *buf = conn.buf;
    while (buf[0] != STARTED)
        ub_yield();
    if (exiting)
        ub_exit(3);
    ub_printf("close = %ld\n", ub_cap_delete(conn.slot));
    closed = 1;
    ub_thread_exit();
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "call";
    if (argc > 2 && ub_streq(argv[2], "--as-server"))
        ub_ipc_register("closing_client", nothing);
    long r = ub_ipc_connect_when_up("slow", &conn);
    if (r < 0) {
        ub_printf("closing_client: cannot connect: %ld\n", r);
        return 1;
    }
    if (ub_streq(mode, "call")) {
        long mr[4] = {0, 0, 0, 0};
        r = ub_ipc_call(&conn, mr);
        ub_printf("next = %ld %ld\n", r, mr[0]);
        return 0;
    }
    exiting = ub_streq(mode, "exit");
    r = ub_thread_create(closer, stack + sizeof stack, 0);
    if (r < 0) {
        ub_printf("closing_client: cannot start a thread: %ld\n", r);
        return 1;
    }
    long mr[4] = {1, 0, 0, 0};
    r = ub_ipc_call(&conn, mr);
    ub_printf("call = %ld %ld\n", r, mr[0]);
    while (!closed)
        ub_yield();
    ub_printf("done\n");
    return 0;
}
