/* legit_client: NOT an attack. The legitimate in-kernel client of echo that every red-team
 * row starts with, so the attacks have a live connection, gate and control page to aim at.
 *
 * It connects to echo, makes one checked ECHO_REGS call through its gate, prints
 * "legit_client: call ok", then blocks for good on a notification nobody signals (its
 * connection stays open while the attacker runs). Used by src/underbridge/redteam/.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"
#include "echo_proto.h"

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect(ECHO_SERVICE, &conn);
    if (r < 0) {
        ub_printf("legit_client: cannot connect: %ld\n", r);
        return 1;
    }
    long mr[4] = {ECHO_REGS, 7, 8, 9};
    r = ub_ipc_call(&conn, mr);
    if (r < 0 || mr[0] != ECHO_REGS || mr[1] != 7 || mr[2] != 8 || mr[3] != 9) {
        ub_printf("legit_client: call broken: %ld {%ld, %ld, %ld}\n", r, mr[1], mr[2], mr[3]);
        return 1;
    }
    ub_printf("legit_client: call ok\n");
    ub_notif_wait(ub_notif_create());
    ub_printf("legit_client: woke up, which nobody should make it do\n");
    return 1;
}
