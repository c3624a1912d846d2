/* gate_wrpkru_jump: jump into a gate right onto its first wrpkru, with a chosen PKRU.
 *
 * The attack: argv[1] is the address of the first `wrpkru` in another client's gate to
 * echo. Call it with EAX = 0 (every key open, the kernel's included) and ECX = EDX = 0,
 * skipping the gate's caller authentication and its own `mov eax, <server pkru>`.
 * Expected hardware response: the wrpkru itself succeeds, and the gate's check right
 * after it (cmp eax, <server pkru>; jne) lands on the gate's ud2: #UD with PKRU 0 at
 * that ud2; the attacker is terminated before it can use the open keys.
 * Checked by: tests/test_redteam.py::test_row[gate-wrpkru-jump].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    unsigned long target = attack_arg(argc, argv, 1);

    ub_printf("calling %p with eax = ecx = edx = 0\n", (void *)target);
    __asm__ volatile("call *%0"
                     :
                     : "r"(target), "a"(0L), "c"(0L), "d"(0L)
                     : "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    ub_printf("LEAKED: came back from the middle of a gate\n");
    return 1;
}
