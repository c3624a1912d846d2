/* write_server: an in-kernel server writes another in-kernel server's memory.
 *
 * The attack: overwrite 8 bytes at argv[1], a live address on echo's stack (echo's
 * saved RSP), under echo's protection key, which the attacker's PKRU does not open.
 * Expected hardware response: #PF on the write, protection key access-disabled
 * (PKRU.AD); the kernel terminates the attacker, echo keeps serving.
 * Checked by: tests/test_redteam.py::test_row[write-server].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_write(attack_arg(argc, argv, 1), 0x4141414141414141UL, "echo's stack");
}
