/* mig_stale_gate: an in-kernel client keeps using echo's gate after echo moved out.
 *
 * The attack: we are an in-kernel program (serving nothing); argv[1] is a live address
 * on echo's stack. We connect to echo (both in kernel space: IPC_CONNECT gives us its
 * gate's address) and call it once. Then we make a marker (a zero-length write), on
 * which the red team has the kernel move echo out to user space. We call the same
 * gate address again, and read echo's stack at its old kernel-space address.
 * A naive kernel leaves the gate and echo's pages on the kernel page table: our call
 * runs echo's handler in kernel space while echo serves from user space (two
 * placements of one server at once), and echo's memory is still there to attack.
 * Expected response: the gate's address now holds the kernel's forwarder, so the call
 * goes through the kernel to echo in user space and returns the right reply
 * ("call = 0 mr1 = 8"); the read is a #PF, page not present, in ring 0: nothing of
 * echo is left on the kernel page table. We end; echo and its clients go on.
 * Checked by: tests/test_redteam_migration.py (row mig-stale-gate).
 */
#include "attack.h"
#include "echo_proto.h"
#include "ub_ipc.h"

int main(int argc, char **argv)
{
    unsigned long echo_stack = attack_arg(argc, argv, 1);
    struct ub_conn conn;
    long r = ub_ipc_connect(ECHO_SERVICE, &conn);
    if (r < 0 || !conn.gate) {
        ub_printf("mig_stale_gate: connect = %ld, gate %lx\n", r, conn.gate);
        return 1;
    }
    long mr[4] = {ECHO_REGS, 7, 8, 9};
    r = ub_ipc_call(&conn, mr);
    ub_printf("observed: first call = %ld mr1 = %ld\n", r, mr[1]);
    ub_write("", 0); /* the marker: echo moves out now */
    long again[4] = {ECHO_REGS, 8, 9, 10};
    r = ub_ipc_call(&conn, again); /* the same gate address */
    ub_printf("observed: call = %ld mr1 = %ld\n", r, again[1]);
    return attack_read(echo_stack, "echo's stack, at its old kernel-space address");
}
