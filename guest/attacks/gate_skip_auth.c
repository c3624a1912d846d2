/* gate_skip_auth: jump past a gate's caller authentication onto its legitimate switch.
 *
 * The attack: argv[1] is the address of `mov eax, <echo's pkru>` just before the first
 * wrpkru of another client's gate to echo (found by disassembling the gate). Call it
 * with ECX = EDX = 0 (what wrpkru needs) and an ECHO_REGS request in RSI: the switch into
 * echo's domain is the gate's own, with the right value.
 * Expected hardware response: the switch succeeds, but the gate then checks the call
 * token in the connection's control page, which only its caller authentication writes:
 * there is none, so it lands on its ud2: #UD with echo's PKRU; the attacker is
 * terminated before the handler runs.
 * Checked by: tests/test_redteam.py::test_row[gate-skip-auth].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    unsigned long target = attack_arg(argc, argv, 1);

    ub_printf("calling %p (the gate's switch) with ecx = edx = 0\n", (void *)target);
    __asm__ volatile("call *%0"
                     :
                     : "r"(target), "a"(0L), "c"(0L), "d"(0L), "S"(0L), "D"(0x4141L)
                     : "r8", "r9", "r10", "r11", "memory", "cc");
    ub_printf("LEAKED: a gate ran without its caller authentication\n");
    return 1;
}
