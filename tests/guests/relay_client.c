/* relay_client: a test client (tests/kernel/test_calls_in_progress.py), not an attack.
 *
 * usage: relay_client CALLS [SERVICE]   connects to SERVICE (default "relay"; retrying
 * until it exists), makes CALLS calls {1, 2, 3, 4} and prints
 * "call = <status> mr0 = <mr0>" for each.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

int main(int argc, char **argv)
{
    long calls = argc > 1 ? ub_parse_count(argv[1]) : 1;
    struct ub_conn conn;
    const char *service = argc > 2 ? argv[2] : "relay";
    long r = ub_ipc_connect_when_up(service, &conn);
    if (r < 0) {
        ub_printf("relay_client: cannot connect: %ld\n", r);
        return 1;
    }
    for (long i = 0; i < calls; i++) {
        long mr[4] = {1, 2, 3, 4};
        r = ub_ipc_call(&conn, mr);
        ub_printf("call = %ld mr0 = %ld\n", r, r < 0 ? 0 : mr[0]);
    }
    return 0;
}
