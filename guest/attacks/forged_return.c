/* forged_return: return into our client from our own thread, with a reply we chose
 * (break A2).
 *
 * The attack: we are in-kernel server R (ATTACK_SERVICE). The victim V
 * (victim_client.c, mode "call"), an in-kernel client, connects to us and calls us
 * through its gate. Our handler, now on V's thread, notes its return address (the
 * instruction after the gate's `call <handler>`: where the gate's return half starts)
 * and keeps V's call in progress for good. Our second thread then jumps there itself,
 * with RSP at a struct ub_msg of our own holding a forged reply (mr0..mr3 = 0x666).
 * A return half that trusts a token its server can write (the control page is shared
 * with us) switches to V's PKRU, restores V's saved registers and returns into V's code
 * after its call site, on our thread, with our reply: V's code after the call runs a
 * second time, and V sees a reply its server never gave.
 * Expected hardware response: the return half accepts only the genuine return of the
 * call in progress on the same thread, so our thread stops at the gate's ud2 (#UD,
 * with V's PKRU: the check comes after the switch). The fault is ours: the kernel ends
 * us, and V's genuine call, still inside our handler, returns -EPIPE: V prints only
 * "victim: call = -32" and stays alive.
 * Checked by: tests/regress/test_forged_gate_return.py (row forged-return).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define FORGED 0x666

static volatile long in_handler;
static volatile unsigned long gate_return;
static struct ub_msg forged __attribute__((aligned(16)));
ATTACK_STACK(second_stack);

static void handler(struct ub_msg *msg)
{
    (void)msg;
    gate_return = (unsigned long)__builtin_return_address(0);
    in_handler = 1;
    for (;;) /* V's call stays in progress */
        __asm__ volatile("" ::: "memory");
}

static void second(unsigned long unused)
{
    (void)unused;
    while (!in_handler)
        ub_yield();
    forged.badge = 0;
    forged.buf = 0;
    for (int i = 0; i < 4; i++)
        forged.mr[i] = FORGED;
    ub_printf("jumping to %p (after the gate's call of my handler) with RSP at a forged "
              "reply\n", (void *)gate_return);
    __asm__ volatile("movq %[msg], %%rsp\n\t"
                     "jmp *%[target]"
                     :
                     : [msg] "r"(&forged), [target] "r"(gate_return)
                     : "memory");
    __builtin_unreachable();
}

int main(void)
{
    long service = ub_ipc_register(ATTACK_SERVICE, handler);
    if (service < 0) {
        ub_printf("forged_return: cannot register: %ld\n", service);
        return 1;
    }
    long thread = ub_thread_create(second, second_stack + ATTACK_STACK_SIZE, 0);
    if (thread < 0) {
        ub_printf("forged_return: cannot create a thread: %ld\n", thread);
        return 1;
    }
    ub_notif_wait(ub_notif_create());
    return 1;
}
