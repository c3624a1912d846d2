/* kernel_code_jump: an in-kernel server jumps into the kernel's own code.
 *
 * The attack: protection keys do not govern instruction fetch, so any executable
 * kernel page is reachable from ring 0. Jump (with EAX = argv[2], ECX = EDX = 0) to
 * argv[1]: either where the machine's boot stubs were, one of which ends in a
 * `wrpkru` (a gadget to open every key), or the page a kernel-called gate returns to
 * (once filled with `hlt`, which stopped the CPU and crashed the Python kernel).
 * Expected hardware response: #PF fetch, page not present, for the boot stubs (they
 * are unmapped after boot); #UD for the gate return page (filled with ud2). The
 * kernel terminates the attacker and goes on.
 * Checked by: tests/test_redteam.py::test_row[boot-stub-wrpkru] and [gate-return-page].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    unsigned long target = attack_arg(argc, argv, 1);
    unsigned long eax = attack_arg(argc, argv, 2);
    ub_printf("jumping to %p with eax %lx\n", (void *)target, eax);
    __asm__ volatile("jmp *%0" ::"r"(target), "a"(eax), "c"(0), "d"(0) : "memory");
    ub_printf("broken: came back from the kernel's code\n");
    return 1;
}
