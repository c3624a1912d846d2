/* ring3_privileged: an application executes a privileged instruction in ring 3.
 *
 * The attack: argv[1] names the instruction: "cr3" (mov cr3, rax: switch address
 * space), "hlt" (stop the CPU), "wrmsr" (redirect the syscall entry point, LSTAR).
 * Expected hardware response: #GP at that instruction, which the kernel reports with
 * the instruction disassembled, terminating only this process.
 * Checked by: tests/kernel/test_kernel.py::test_privileged_instruction_kills_only_its_process.
 */
#include "ub.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    ub_printf("trying %s\n", argv[1]);
    switch (argv[1][0]) {
    case 'c':
        __asm__ volatile("mov %%rax, %%cr3" ::"a"(0x1000UL) : "memory");
        break;
    case 'h':
        __asm__ volatile("hlt");
        break;
    case 'w':
        __asm__ volatile("wrmsr" ::"c"(0xC0000082U), "a"(0), "d"(0));
        break;
    }
    ub_printf("%s did not fault!\n", argv[1]);
    return 1;
}
