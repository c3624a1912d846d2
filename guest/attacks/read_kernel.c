/* read_kernel: an in-kernel server reads the kernel's own data.
 *
 * The attack: argv[1] is KERNEL_DATA (machine/boot.py), the page holding the GDT: a U=1
 * page on the kernel page table under key 0, which no server's PKRU opens.
 * Expected hardware response: #PF on the read, protection key access-disabled
 * (PKRU.AD); the kernel terminates the attacker.
 * Checked by: tests/test_redteam.py::test_row[read-kernel].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_read(attack_arg(argc, argv, 1), "the kernel's GDT");
}
