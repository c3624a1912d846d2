/* sky_caller: a test client (tests/kernel/test_skybridge.py), not an attack.
 *
 * usage: sky_caller SERVICE   connects to SERVICE, makes one call with mr[0] = its
 * trampoline's address, and prints "call = <status> mr0 = <mr0>". With a stray
 * `vmfunc` hidden in an immediate (below), which the kernel's scan must find.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

int main(int argc, char **argv)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(argc > 1 ? argv[1] : "echo", &conn);
    if (r < 0) {
        ub_printf("connect = %ld\n", r);
        return 0;
    }
    long mr[4] = {(long)conn.gate, 2, 3, 4};
    r = ub_ipc_call(&conn, mr);
    ub_printf("call = %ld mr0 = %ld\n", r, r < 0 ? 0 : mr[0]);
    return 0;
}
