/* page_tables: an in-kernel server reads or writes the kernel's page table.
 *
 * The attack: page tables live in no virtual address space (the Python kernel reaches
 * physical memory directly), so there is no virtual address to aim at; the best guess
 * is an identity mapping. argv[2] is the physical address of the kernel page table's
 * root (PML4), used as a virtual address. argv[1] "read" reads its entry 0; "write"
 * stores argv[3] into entry 0: that address with P|RW|U set, a self-map that would put
 * every page table in reach.
 * Expected hardware response: #PF, page not present (that address is mapped by no one);
 * the kernel terminates the attacker.
 * Checked by: tests/test_redteam.py::test_row[read-page-tables] and
 * test_row[write-page-tables].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    unsigned long root = attack_arg(argc, argv, 2);

    if (argc > 1 && argv[1][0] == 'w')
        return attack_write(root, attack_arg(argc, argv, 3), "PML4 entry 0 (identity guess)");
    return attack_read(root, "PML4 entry 0 (identity guess)");
}
