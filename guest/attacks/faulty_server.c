/* faulty_server: a server whose handler faults while its client's call is in progress.
 *
 * The attack: we are in-kernel server R (ATTACK_SERVICE); argv[1] is a live address on
 * echo's stack. The victim V (victim_client.c, mode "call"), an in-kernel client,
 * connects to us and calls us through its gate; our handler, running on V's thread
 * (thread migration), reads echo's stack. A kernel that blames the thread's owner for
 * the fault would end V, the caller, for what its server did.
 * Expected hardware response: #PF protection key access-disabled (PKRU.AD) reading
 * echo's stack, ring 0, with our PKRU. The fault is ours: the kernel ends us (not V),
 * and V's call returns -EPIPE (-32): V prints "victim: call = -32" and stays alive.
 * Checked by: tests/regress/test_handler_fault_ended_the_caller.py (row server-fault).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static unsigned long target;

static void handler(struct ub_msg *msg)
{
    /* no printing here: a thread inside a gate call cannot make syscalls (-EDEADLK) */
    msg->mr[0] = (long)*(volatile unsigned long *)target;
    msg->mr[1] = 0x4c45414b; /* "LEAK": the read went through */
}

int main(int argc, char **argv)
{
    target = attack_arg(argc, argv, 1);
    long service = ub_ipc_register(ATTACK_SERVICE, handler);
    if (service < 0) {
        ub_printf("faulty_server: cannot register: %ld\n", service);
        return 1;
    }
    ub_printf("my handler will read echo's stack at %p on its caller's thread\n",
              (void *)target);
    ub_notif_wait(ub_notif_create());
    return 1;
}
