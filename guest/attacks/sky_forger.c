/* sky_forger: a SkyBridge server that returns with a forged key
 * (the partner of red-team row sky-forged-key), an attack that would work on a trampoline
 * without the return check.
 *
 * The attack: we register "forger"; our function, running on the caller's thread in
 * our address space, does not return: it jumps onto the return `vmfunc` of the
 * caller's trampoline (whose address the caller put in mr[0]: the second 0F 01 D4,
 * after `mov ecx, <the caller's EPTP index>`) with a reply of our choosing and a
 * forged key in R11.
 * Expected response: the return half finds the key is not the binding's: the caller's
 * call returns -EPERM (-1) with no reply, its registers restored; we stay alive.
 * Checked by: redteam row sky-forged-key, tests/kernel/test_skybridge.py.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static void forge(struct ub_msg *msg)
{
    if (msg->mr[0] == UB_IPC_CLOSED && msg->buf == 0)
        return; /* a close notification (ub_ipc.h): no trampoline to forge a return to */
    const unsigned char *t = (const unsigned char *)msg->mr[0];
    unsigned long at = 0;
    for (int seen = 0; seen < 2; at++)
        if (t[at] == 0x0f && t[at + 1] == 0x01 && t[at + 2] == 0xd4 && ++seen == 2)
            break;
    unsigned long index = *(const unsigned int *)(t + at - 4);
    register long r11 __asm__("r11") = 0x1234;
    register long r8 __asm__("r8") = 0x666;
    __asm__ volatile("xor %%eax, %%eax\n\tmov %[reply], %%rsi\n\tjmp *%[at]"
                     :
                     : [at] "r"((unsigned long)t + at), "c"(index), "r"(r11), "r"(r8),
                       [reply] "i"(0x666)
                     : "rax", "rsi", "memory");
    __builtin_unreachable();
}

int main(void)
{
    long service = ub_ipc_register("forger", forge);
    if (service < 0)
        return 1;
    ub_ipc_serve(service, forge);
}
