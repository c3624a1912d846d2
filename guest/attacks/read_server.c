/* read_server: an in-kernel server reads another in-kernel server's memory.
 *
 * The attack: argv[1] is a live address on echo's stack (echo's saved RSP while it
 * waits for calls), on the same page table as the attacker, in ring 0, under echo's
 * protection key, which the attacker's PKRU does not open.
 * Expected hardware response: #PF on the read, protection key access-disabled
 * (PKRU.AD); the kernel terminates the attacker, echo keeps serving.
 * Checked by: tests/test_redteam.py::test_row[read-server].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_read(attack_arg(argc, argv, 1), "echo's stack");
}
