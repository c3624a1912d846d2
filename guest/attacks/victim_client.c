/* victim_client: NOT an attack. The in-kernel client that rows with an attacking
 * server call (forged-return, server-fault, unmap-buffer); what it prints as
 * "victim: ..." lines is checked by the red team.
 *
 * usage: victim_client call | buffer
 * Both modes connect to ATTACK_SERVICE (retrying until it exists), then:
 *   call    make one call {1, 2, 3, 4} through the gate. A second thread of ours waits
 *           until the call has returned and prints "victim: call = <result>", and, if
 *           it returned a reply, "victim: reply mr0 = <mr0>". The code after the call
 *           also checks that it runs on our own thread: a thread of another domain
 *           that got there has its syscalls refused (-EDEADLK), which we report as
 *           "victim: broken: ..." (our code ran on a thread that is not ours) before
 *           ending that thread with ud2. If the call failed, our own thread calls once
 *           more and the watcher prints "victim: next call = <result>" (a server that
 *           is gone must keep answering -EPIPE, not fault us).
 *   buffer  OP_HELLO, then OP_POLL until the server says it tried to unmap our shared
 *           buffer, then write "ok" into the buffer and have the server check it
 *           (OP_CHECK): "victim: buffer ok", then OP_BYE.
 * Afterwards it blocks for good on a notification (it must stay alive).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static volatile long status = 1;
static volatile long reply0;
static volatile long after_call; /* a syscall's result just after the call returned */
static volatile long returns;    /* how often the code after the call ran */
static volatile long reported;
static volatile long next_status = 1; /* the second call's result, if one was made */
static volatile long finished;        /* our own thread is done calling */
ATTACK_STACK(watcher_stack);

static void block_for_good(void)
{
    ub_notif_wait(ub_notif_create());
}

static void watcher(unsigned long unused)
{
    (void)unused;
    while (!returns || (!finished && after_call == 0))
        ub_yield();
    ub_printf("victim: call = %ld\n", status);
    if (status < 0 && finished)
        ub_printf("victim: next call = %ld\n", next_status);
    if (status == 0)
        ub_printf("victim: reply mr0 = 0x%lx\n", reply0);
    if (after_call != 0)
        ub_printf("victim: broken: the code after my call ran on a thread that is not mine "
                  "(yield = %ld)\n", after_call);
    reported = 1;
    block_for_good();
}

static int call_mode(struct ub_conn *conn)
{
    long thread = ub_thread_create(watcher, watcher_stack + ATTACK_STACK_SIZE, 0);
    if (thread < 0) {
        ub_printf("victim: cannot create a thread: %ld\n", thread);
        return 1;
    }
    long mr[4] = {1, 2, 3, 4};
    long r = ub_ipc_call(conn, mr);
    status = r;
    reply0 = mr[0];
    after_call = ub_yield(); /* 0 on our own thread */
    returns++;
    if (after_call != 0) { /* not our thread: let the watcher report, then end it */
        while (!reported)
            ub_yield();
        __builtin_trap();
    }
    if (r < 0) {
        long again[4] = {1, 2, 3, 4};
        next_status = ub_ipc_call(conn, again);
    }
    finished = 1;
    block_for_good();
    return 1;
}

static long call(struct ub_conn *conn, long op, long *reply)
{
    long mr[4] = {op, 0, 0, 0};
    long r = ub_ipc_call(conn, mr);
    *reply = mr[0];
    if (r < 0)
        ub_printf("victim: call %ld = %ld\n", op, r);
    return r;
}

static int buffer_mode(struct ub_conn *conn)
{
    long reply = 0;
    if (call(conn, OP_HELLO, &reply) < 0)
        goto out;
    do {
        ub_yield();
        if (call(conn, OP_POLL, &reply) < 0)
            goto out;
    } while (!reply);
    volatile char *buf = conn->buf;
    buf[0] = 'o';
    buf[1] = 'k';
    if (call(conn, OP_CHECK, &reply) < 0)
        goto out;
    if (reply == 1)
        ub_printf("victim: buffer ok\n");
    else
        ub_printf("victim: the server read back %ld\n", reply);
    call(conn, OP_BYE, &reply);
out:
    block_for_good();
    return 1;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!ub_streq(mode, "call") && !ub_streq(mode, "buffer")) {
        ub_printf("usage: victim_client call|buffer\n");
        return 2;
    }
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(ATTACK_SERVICE, &conn);
    if (r < 0) {
        ub_printf("victim: cannot connect: %ld\n", r);
        return 1;
    }
    return ub_streq(mode, "call") ? call_mode(&conn) : buffer_mode(&conn);
}
