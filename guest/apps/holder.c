/* holder: opens connections to a service and keeps them (bench/migrate.py measures a
 * migration against the number of its server's connections).
 *
 * usage: holder SERVICE N
 *
 * Connects N times to SERVICE (waiting until it is up), makes one call on each checking
 * the reply, prints "holder: N connections held", then yields forever, holding them,
 * until it is killed. Exit status: 1 if a connect or call failed, 2 for bad usage.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define MAX_CONNECTIONS 256

static struct ub_conn conns[MAX_CONNECTIONS];

int main(int argc, char **argv)
{
    long n = argc == 3 ? ub_parse_count(argv[2]) : -1;
    if (n < 1 || n > MAX_CONNECTIONS) {
        ub_printf("usage: holder SERVICE N (1..%d)\n", MAX_CONNECTIONS);
        return 2;
    }
    for (long i = 0; i < n; i++) {
        long r = ub_ipc_connect_when_up(argv[1], &conns[i]);
        long mr[4] = {0, i, ~i, 7};
        if (r == 0)
            r = ub_ipc_call(&conns[i], mr);
        if (r < 0 || mr[1] != i || mr[2] != ~i) {
            ub_printf("holder: connection %ld: %ld\n", i, r);
            return 1;
        }
    }
    ub_printf("holder: %ld connections held\n", n);
    for (;;)
        ub_yield();
}
