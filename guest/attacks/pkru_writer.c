/* pkru_writer: an in-kernel server whose code can rewrite its own PKRU.
 *
 * The attack: argv[1] is "wrpkru" or "xrstor" (an XRSTOR whose PKRU component would
 * load any value), argv[2] "plain" or "hidden" (bytes inside a movabs immediate,
 * reached by a computed jump). Either would open every protection key, and no
 * hypervisor can trap them.
 * Expected response: the kernel refuses to place the binary in kernel space: the
 * scanner finds the instruction at any byte offset, hidden or not. (The binary holds
 * all four variants, so every row shows the same refusal; the scanner's own tests,
 * tests/bridge/test_scan.py, show each kind found on its own.)
 * Checked by: tests/test_redteam.py::test_row[priv-wrpkru-*] and [priv-xrstor-*].
 */
#include "attack.h"

#define HIDDEN(imm)                                                                  \
    __asm__ volatile("lea 1f+2(%%rip), %%rbx\n\tjmp *%%rbx\n1:\tmovabs $" imm ", %%rax" \
                     ::: "rax", "rbx", "memory")

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    ub_printf("attempting %s (%s)\n", argv[1], argv[2]);
    if (argv[2][0] == 'h') {
        if (argv[1][0] == 'w')
            HIDDEN("0x9090909090ef010f"); /* wrpkru */
        else
            HIDDEN("0x909090909028ae0f"); /* xrstor (%rax) */
    } else {
        if (argv[1][0] == 'w')
            __asm__ volatile("wrpkru" ::"a"(0), "c"(0), "d"(0) : "memory");
        else
            __asm__ volatile("xrstor (%%rax)" ::"a"(0), "d"(0) : "memory");
    }
    ub_printf("broken: PKRU rewritten\n");
    return 1;
}
