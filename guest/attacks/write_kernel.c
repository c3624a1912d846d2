/* write_kernel: an in-kernel server writes the kernel's own data.
 *
 * The attack: overwrite the first 8 bytes at argv[1], KERNEL_DATA, the GDT (key 0), with
 * a flat ring-3 code descriptor's bits, as a step towards changing its own privilege.
 * Expected hardware response: #PF on the write, protection key access-disabled
 * (PKRU.AD); the kernel terminates the attacker.
 * Checked by: tests/test_redteam.py::test_row[write-kernel].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_write(attack_arg(argc, argv, 1), 0x00AFFA000000FFFFUL, "the kernel's GDT");
}
