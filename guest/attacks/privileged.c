/* privileged: an in-kernel server executes a privileged instruction, plainly or hidden.
 *
 * The attack: argv[1] names the instruction (cr4, cr0, cr3, wrmsr, lgdt, lidt, hlt,
 * cli, invlpg, out); argv[2] is "plain" (an ordinary instruction), "hidden" (its
 * bytes sit inside a movabs immediate, reached by a computed jump to the middle of
 * that instruction, where a linear disassembly never sees them) or, for cr4 and
 * wrmsr, "span" (its bytes straddle two ordinary instructions: the last byte of a
 * `mov eax, 0x0f000000` and the first of the next, reached by a computed jump).
 * Expected response: a VM exit at the instruction from the secure monitor, plain or
 * hidden, and the kernel terminates the attacker. (wrpkru and xrstor, which no
 * hypervisor can trap, are in pkru_writer.c: a binary holding them is refused.)
 * Checked by: tests/test_redteam.py::test_row[priv-<name>-<variant>].
 */
#include "attack.h"

/* Jump into the immediate of a movabs: its bytes start 2 bytes in (REX.W, B8). The
 * immediate holds the instruction's bytes, padded with NOPs (0x90). */
#define HIDDEN(imm)                                                                  \
    __asm__ volatile("lea 1f+2(%%rip), %%rbx\n\tjmp *%%rbx\n1:\tmovabs $" imm ", %%rax" \
                     ::: "rax", "rbx", "memory")
#define PLAIN(insn) __asm__ volatile(insn ::"a"(0), "c"(0), "d"(0) : "memory")
/* b8 00 00 00 0f | <second>: jumping to the 0f runs 0f <second...> */
#define SPAN(second)                                                                 \
    __asm__ volatile("lea 1f+4(%%rip), %%rbx\n\tjmp *%%rbx\n1:\tmov $0x0f000000, %%eax\n\t" \
                     second ::: "rax", "rbx", "memory")

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    const char *name = argv[1];
    int hidden = ub_streq(argv[2], "hidden"), span = ub_streq(argv[2], "span");
    ub_printf("attempting %s (%s)\n", name, argv[2]);
    if (ub_streq(name, "cr4")) {
        if (span) SPAN(".byte 0x22, 0xe0"); /* and ah, al; with the 0f: mov cr4, rax */
        else if (hidden) HIDDEN("0x9090909090e0220f"); else PLAIN("mov %%rax, %%cr4");
    } else if (ub_streq(name, "cr0")) {
        if (hidden) HIDDEN("0x9090909090c0220f"); else PLAIN("mov %%rax, %%cr0");
    } else if (ub_streq(name, "cr3")) {
        if (hidden) HIDDEN("0x9090909090d8220f"); else PLAIN("mov %%rax, %%cr3");
    } else if (ub_streq(name, "wrmsr")) {
        if (span) SPAN(".byte 0x30, 0xc0"); /* xor al, al; with the 0f: wrmsr */
        else if (hidden) HIDDEN("0x909090909090300f"); else PLAIN("wrmsr");
    } else if (ub_streq(name, "lgdt")) {
        if (hidden) HIDDEN("0x909090909010010f"); else PLAIN("lgdt (%%rax)");
    } else if (ub_streq(name, "lidt")) {
        if (hidden) HIDDEN("0x909090909018010f"); else PLAIN("lidt (%%rax)");
    } else if (ub_streq(name, "hlt")) {
        if (hidden) HIDDEN("0x90909090909090f4"); else PLAIN("hlt");
    } else if (ub_streq(name, "cli")) {
        if (hidden) HIDDEN("0x90909090909090fa"); else PLAIN("cli");
    } else if (ub_streq(name, "invlpg")) {
        if (hidden) HIDDEN("0x909090909038010f"); else PLAIN("invlpg (%%rax)");
    } else if (ub_streq(name, "out")) {
        if (hidden) HIDDEN("0x90909090909090ee"); else PLAIN("out %%al, %%dx");
    } else {
        return 2;
    }
    ub_printf("broken: %s (%s) executed\n", name, argv[2]);
    return 1;
}
