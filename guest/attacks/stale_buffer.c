/* stale_buffer: use a connection's shared buffer after the connection is closed.
 *
 * The attack: connect to echo, write the shared buffer and make one checked call (all
 * legitimate), then delete the connection cap (CAP_DELETE closes the connection: its
 * gate, keys and buffer go) and write the buffer again, hoping its pages or key were
 * left behind or handed to the next connection.
 * Expected hardware response: #PF on the second write, page not present (the buffer is
 * unmapped from the kernel page table); the kernel terminates the attacker.
 * Checked by: tests/test_redteam.py::test_row[stale-buffer].
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"
#include "echo_proto.h"

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect(ECHO_SERVICE, &conn);
    if (r < 0) {
        ub_printf("stale_buffer: cannot connect: %ld\n", r);
        return 1;
    }
    volatile char *buf = conn.buf;
    buf[0] = 'a';
    buf[1] = 'b';
    long mr[4] = {ECHO_BUF, 2, 0, 0};
    r = ub_ipc_call(&conn, mr);
    if (r < 0 || mr[0] != 0 || buf[0] != 'b') {
        ub_printf("stale_buffer: the legitimate call is broken: %ld, %ld\n", r, mr[0]);
        return 1;
    }
    r = ub_cap_delete(conn.slot);
    ub_printf("connection deleted (%ld); writing the buffer at %p again\n", r, conn.buf);
    buf[0] = 'x';
    ub_printf("LEAKED: wrote a closed connection's buffer\n");
    return 1;
}
