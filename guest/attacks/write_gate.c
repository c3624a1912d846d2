/* write_gate: an in-kernel server rewrites a gate's machine code.
 *
 * The attack: argv[1] is the gate of another client's connection to echo (key 0,
 * executable, not writable). Overwrite its first 8 bytes, the caller authentication
 * (xor ecx, ecx; rdpkru; cmp eax, ...), with NOPs, so that anyone could pass.
 * Expected hardware response: #PF on the write, protection key access-disabled
 * (PKRU.AD: key 0 is closed to every server); the attacker is terminated and the gate
 * is unchanged.
 * Checked by: tests/test_redteam.py::test_row[write-gate].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    return attack_write(attack_arg(argc, argv, 1), 0x9090909090909090UL, "the gate's code");
}
