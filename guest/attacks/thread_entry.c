/* thread_entry: have the kernel start a thread of ours where we may not jump, or on a
 * stack that is not ours (PKU Pitfalls: calling a trusted entry directly with forged
 * state, through a kernel call).
 *
 * usage: thread_entry ENTRY STACK_TOP   (STACK_TOP 0: a stack of our own)
 * The attack: THREAD_CREATE with entry = argv[1] and stack top = argv[2]. Two rows:
 *   - entry on the switch of another client's gate to echo (`mov eax, <echo's pkru>`,
 *     past its caller check), our own stack: a thread that starts inside a gate never
 *     passed its caller check, and its registers are the kernel's choice, not ours;
 *   - entry at echo's own entry point, with the stack in echo's memory: a kernel that
 *     started a thread with the PKRU of the code it starts in would run echo for us.
 * Expected hardware response: the kernel starts the thread as ours, with our PKRU and
 * nothing else (it checks only that the addresses are user addresses): in the gate,
 * the gate's own switch runs and its call-token check fails: #UD at its ud2 with
 * echo's PKRU; in echo's code, its first stack access takes #PF protection key
 * access-disabled (PKRU.AD). Either way the fault is the new thread's: the kernel
 * ends us, and echo is unharmed.
 * Checked by: tests/test_redteam.py::test_row[thread-into-gate, thread-into-echo].
 */
#include "attack.h"
#include "ub_sys.h"

ATTACK_STACK(own_stack);

int main(int argc, char **argv)
{
    unsigned long entry = attack_arg(argc, argv, 1);
    unsigned long stack = attack_arg(argc, argv, 2);
    void *top = stack ? (void *)stack : (void *)(own_stack + ATTACK_STACK_SIZE);

    long r = ub_thread_create((void (*)(unsigned long))entry, top, 0);
    if (r < 0) {
        ub_printf("observed: thread_create = %ld\n", r);
        return 0;
    }
    ub_printf("started a thread at %p, stack top %p\n", (void *)entry, top);
    ub_notif_wait(ub_notif_create());
    ub_printf("LEAKED: the thread at %p ran and we were woken\n", (void *)entry);
    return 1;
}
