/* close_mid_call: crash a server by closing the connection in the middle of its call.
 *
 * The attack: we are an application with two threads. The first calls the victim
 * server (slow_buffer.c) with {1}; its handler marks our shared buffer, works for a
 * while, then uses the buffer again. Our second thread waits for the mark (the call is
 * in progress in the server) and closes the connection (CAP_DELETE).
 * A naive kernel destroys the buffer on the close, unmapping it from the server too:
 * the server's handler takes #PF (page not present) on it and the server dies, with
 * every other client's call in progress.
 * Expected response: the buffer leaves us at once and the server at the end of its call
 * (kernel/orphans.py); the server lives. We print what our call returned ("call = ..."),
 * then connect again and call {0} ("again = 0 mr0 = 7": the server still serves).
 * Checked by: tests/test_redteam.py (rows close-mid-call*).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define MARK 0x6d61726b

static struct ub_conn conn;
static volatile long closed;
ATTACK_STACK(second_stack);

static void second(unsigned long unused)
{
    (void)unused;
    volatile long *buf = conn.buf;
    while (buf[0] != MARK)
        ub_yield();
    ub_printf("observed: close = %ld\n", ub_cap_delete(conn.slot));
    closed = 1;
    ub_thread_exit();
}

int main(void)
{
    long r = ub_ipc_connect_when_up(VICTIM_SERVICE, &conn);
    if (r < 0) {
        ub_printf("close_mid_call: cannot connect: %ld\n", r);
        return 1;
    }
    if (ub_thread_create(second, second_stack + ATTACK_STACK_SIZE, 0) < 0) {
        ub_printf("close_mid_call: cannot start a thread\n");
        return 1;
    }
    long mr[4] = {1, 0, 0, 0};
    r = ub_ipc_call(&conn, mr);
    while (!closed)
        ub_yield();
    ub_printf("observed: call = %ld mr0 = %lx\n", r, mr[0]);
    struct ub_conn again;
    r = ub_ipc_connect(VICTIM_SERVICE, &again);
    long next[4] = {0, 0, 0, 0};
    if (r == 0)
        r = ub_ipc_call(&again, next);
    ub_printf("observed: again = %ld mr0 = %ld\n", r, next[0]);
    return 0;
}
