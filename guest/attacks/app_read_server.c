/* app_read_server: an application (ring 3, its own page table) reads an in-kernel
 * server's memory.
 *
 * The attack: argv[1] is a live address on echo's stack, valid on the kernel page table.
 * The application's page table maps none of the kernel's or in-kernel servers' pages.
 * Expected hardware response: #PF on the read, page not present, in ring 3; the kernel
 * terminates the application.
 * Checked by: tests/test_redteam.py::test_row[app-read-server].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_read(attack_arg(argc, argv, 1), "echo's stack");
}
