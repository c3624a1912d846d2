/* ipc_fastpath_caps: an application that calls through capabilities it should not be
 * able to call through (red-team rows fastpath-caps and fastpath-caps-sel4), an attack
 * that would work on an IPC fast path that trusted the slot it was given.
 *
 * IPC_CALL takes a fast path (kernel/ipc/*.py `fastpath`: check, then commit) when the
 * common case holds. The attack gives it every slot that must fail its checks:
 *   - a copy of its connection cap without the CALL right (CAP_COPY with mask GRANT);
 *   - a slot it has just deleted (the connection is still alive: only the cap is gone);
 *   - a slot far out of range (all ones: -1 as a slot number).
 * Expected response: -EPERM (-1), -EBADCAP (-77), -EBADCAP (-77); echo never serves any
 * of them. A genuine call through a fresh connection then works (echo returns mr1).
 * Prints "observed: weak = <status>", "observed: deleted = <status>",
 * "observed: wild = <status>", "observed: call = <status> mr1 = <mr1>".
 * Checked by: redteam rows fastpath-caps (underbridge) and fastpath-caps-sel4.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

/* IPC_CALL through `slot` with the kernel path (no gate), as ub_ipc_call does. */
static long call_slot(long slot)
{
    struct ub_conn conn = {0};
    long mr[4] = {0, 8, 9, 10};
    conn.slot = slot;
    return ub_ipc_call(&conn, mr);
}

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up("echo", &conn);
    if (r < 0) {
        ub_printf("ipc_fastpath_caps: cannot connect: %ld\n", r);
        return 1;
    }
    long weak = ub_cap_copy(conn.slot, UB_RIGHT_GRANT);
    if (weak < 0) {
        ub_printf("ipc_fastpath_caps: cap_copy failed: %ld\n", weak);
        return 1;
    }
    ub_printf("observed: weak = %ld\n", call_slot(weak));
    struct ub_conn doomed;
    if (ub_ipc_connect("echo", &doomed) < 0 || ub_cap_delete(doomed.slot) < 0) {
        ub_printf("ipc_fastpath_caps: cannot set up the deleted slot\n");
        return 1;
    }
    ub_printf("observed: deleted = %ld\n", call_slot(doomed.slot));
    ub_printf("observed: wild = %ld\n", call_slot(-1));
    long mr[4] = {0, 8, 9, 10}; /* echo returns them */
    r = ub_ipc_call(&conn, mr);
    ub_printf("observed: call = %ld mr1 = %ld\n", r, r < 0 ? 0 : mr[1]);
    return 0;
}
