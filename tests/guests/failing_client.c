/* failing_client: a test client (tests/kernel/test_clean_failure.py), not an attack.
 *
 * usage: failing_client OP [SERVICE] [--as-server]   connects to SERVICE (default
 * "stuck", the test server; "relay" forwards to it), waiting until it is up,
 * calls {0} (answered {7}), then {OP} (1: the handler spins until the server is killed;
 * 2: it faults), then {0} again; then writes its shared buffer and reads it back (it
 * must still be mapped), closes the connection, and prints one line per step:
 *   "first = <status> <mr0>", "failed = <status>", "next = <status>",
 *   "buffer = ok", "close = <status>".
 * --as-server: register a service first (in kernel space under the designs that place
 * servers there, so the calls are server-server).
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static void nothing(struct ub_msg *msg) { (void)msg; }

int main(int argc, char **argv)
{
    long op = argc > 1 ? ub_parse_count(argv[1]) : 1;
    const char *service = "stuck";
    for (int i = 2; i < argc; i++) {
        if (ub_streq(argv[i], "--as-server"))
            ub_ipc_register("failing_client", nothing);
        else
            service = argv[i];
    }
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(service, &conn);
    if (r < 0) {
        ub_printf("failing_client: cannot connect: %ld\n", r);
        return 1;
    }
    long mr[4] = {0, 0, 0, 0};
    r = ub_ipc_call(&conn, mr);
    ub_printf("first = %ld %ld\n", r, mr[0]);
    long failing[4] = {op, 0, 0, 0};
    ub_printf("failed = %ld\n", ub_ipc_call(&conn, failing));
    long again[4] = {0, 0, 0, 0};
    ub_printf("next = %ld\n", ub_ipc_call(&conn, again));
    volatile unsigned long *buf = conn.buf;
    buf[0] = 0x5eed;
    buf[conn.buf_size / 8 - 1] = 0xfeed;
    if (buf[0] == 0x5eed && buf[conn.buf_size / 8 - 1] == 0xfeed)
        ub_printf("buffer = ok\n");
    ub_printf("close = %ld\n", ub_cap_delete(conn.slot));
    return 0;
}
