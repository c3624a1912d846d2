/* mig_race: an application races migrations of the server it calls.
 *
 * The attack: we are an application calling the victim server (mig_slow.c, whose
 * handler outlasts a time slice) from two threads at once, ROUNDS calls each with its
 * own payload, so one thread's call is queued while the server, preempted, still works
 * on the other's. The red team has the kernel move the server (between kernel space and
 * user space) as it is about to reply after each of our calls: with a reply owed, and
 * often another call queued.
 * A naive kernel moves the server at once: moved into kernel space while it owes a
 * reply and another call is queued, it takes the in-kernel path on its REPLY_WAIT, and
 * the reply and the queued call are lost (both our threads wait for good).
 * Expected response: every migration waits until the server is quiescent; every call
 * returns exactly its own reply ("calls = 20 ok").
 * Checked by: tests/test_redteam_migration.py (row mig-race).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define ROUNDS 10

static struct ub_conn conns[2];
static volatile long ok[2];
static volatile long second_done;
ATTACK_STACK(second_stack);

static void calls(long who)
{
    for (long i = 0; i < ROUNDS; i++) {
        long mr[4] = {who, i, ~i, 42};
        long r = ub_ipc_call(&conns[who], mr);
        if (r == 0 && mr[0] == who && mr[1] == i + 1 && mr[2] == ~i && mr[3] == 42)
            ok[who]++;
        else
            ub_printf("broken: thread %ld call %ld = %ld {%ld, %ld, %ld}\n", who, i, r, mr[1],
                      mr[2], mr[3]);
    }
}

static void second(unsigned long unused)
{
    (void)unused;
    calls(1);
    second_done = 1;
    ub_notif_wait(ub_notif_create());
}

int main(void)
{
    for (int i = 0; i < 2; i++) {
        long r = ub_ipc_connect_when_up(VICTIM_SERVICE, &conns[i]);
        if (r < 0) {
            ub_printf("mig_race: cannot connect: %ld\n", r);
            return 1;
        }
    }
    if (ub_thread_create(second, second_stack + ATTACK_STACK_SIZE, 0) < 0)
        return 1;
    calls(0);
    while (!second_done)
        ub_yield();
    ub_printf("observed: calls = %ld ok\n", ok[0] + ok[1]);
    return 0;
}
