/* mig_caller: NOT an attack. The partner of row mig-old-addresses: it connects to the
 * attacker's service (once it is up), calls it once, prints "victim: call = R" with the
 * call's result, and blocks for good (it stays alive for the victim check).
 * Used by src/underbridge/redteam/migration_rows.py.
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(ATTACK_SERVICE, &conn);
    if (r < 0) {
        ub_printf("mig_caller: cannot connect: %ld\n", r);
        return 1;
    }
    long mr[4] = {1, 2, 3, 4};
    r = ub_ipc_call(&conn, mr);
    ub_printf("victim: call = %ld\n", r);
    ub_notif_wait(ub_notif_create());
    return 1;
}
