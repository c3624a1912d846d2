/* sky_caller: a plain SkyBridge client, the victim of red-team row sky-forged-key (and
 * tests/kernel/test_skybridge.py's genuine call). Not an attack itself.
 *
 * usage: sky_caller SERVICE   connects to SERVICE, makes one call with mr[0] = its
 * trampoline's address (what sky_forger needs to find the return vmfunc), and prints
 * "observed: call = <status> mr0 = <mr0>" (mr0 only if the call succeeded).
 * Expected: against echo, "call = 0 mr0 = <the trampoline's address>"; against
 * sky_forger, "call = -1 mr0 = 0": -EPERM, not the forged reply 0x666.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

int main(int argc, char **argv)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(argc > 1 ? argv[1] : "echo", &conn);
    if (r < 0) {
        ub_printf("observed: connect = %ld\n", r);
        return 0;
    }
    long mr[4] = {(long)conn.gate, 2, 3, 4};
    r = ub_ipc_call(&conn, mr);
    ub_printf("observed: call = %ld mr0 = %ld\n", r, r < 0 ? 0 : mr[0]);
    return 0;
}
