/* call_foreign_gate: call a gate without holding its connection.
 *
 * The attack: argv[1] is the gate of another in-kernel client's connection to echo.
 * Call it with the gate ABI (ub_ipc_call: mr in RSI/RDI/R8/R9, `call *gate`), as its
 * legitimate client would, asking echo for ECHO_REGS.
 * Expected response: none from the hardware; the gate's caller authentication (rdpkru
 * against the client's PKRU) returns -EPERM (-1) without switching domains. The
 * attacker keeps running and reports "observed: gate call = -1".
 * Checked by: tests/test_redteam.py::test_row[call-foreign-gate].
 */
#include "attack.h"
#include "ub_ipc.h"
#include "echo_proto.h"

int main(int argc, char **argv)
{
    struct ub_conn conn = {.slot = -1, .gate = attack_arg(argc, argv, 1)};
    long mr[4] = {ECHO_REGS, 0x4141, 0x4242, 0x4343};

    ub_printf("calling the gate at %p without its connection\n", (void *)conn.gate);
    long r = ub_ipc_call(&conn, mr);
    ub_printf("observed: gate call = %ld\n", r);
    if (r >= 0)
        ub_printf("LEAKED: echo answered a caller without the connection: {%ld, %ld, %ld}\n",
                  mr[1], mr[2], mr[3]);
    return 0;
}
