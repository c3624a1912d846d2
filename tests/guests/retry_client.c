/* retry_client: a test client (tests/kernel/test_supervisor.py), not an attack.
 *
 * usage: retry_client CALLS [SERVICE] [--as-server]   connects to SERVICE (default
 * "echo", waiting until it exists) and makes CALLS ECHO_REGS calls {ECHO_REGS, i, 2, 3}
 * through ub_ipc_call_retry (retriable: echo's reply is the request, registers only;
 * an ECHO_BUF call is not, since echo reverses the buffer in place and may have done
 * so before it died). It prints "call <i> = <status> <reply mr1> at <clock>" for each
 * call that failed or had to reconnect, the clock being rdtsc (the machine's simulated
 * cycles) right after the call. --as-server: register a service first (in kernel space under
 * underbridge, so the calls are server-server).
 */
#include "echo_proto.h"
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static unsigned long clock_now(void)
{
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((unsigned long)hi << 32) | lo;
}

static void nothing(struct ub_msg *msg) { (void)msg; }

int main(int argc, char **argv)
{
    long calls = argc > 1 ? ub_parse_count(argv[1]) : 1;
    const char *service = argc > 2 && argv[2][0] != '-' ? argv[2] : ECHO_SERVICE;
    if (argc > 2 && ub_streq(argv[argc - 1], "--as-server"))
        ub_ipc_register("retry_client", nothing);
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(service, &conn);
    if (r < 0) {
        ub_printf("retry_client: cannot connect: %ld\n", r);
        return 1;
    }
    for (long i = 0; i < calls; i++) {
        long slot = conn.slot;
        long mr[4] = {ECHO_REGS, i, 2, 3};
        r = ub_ipc_call_retry(&conn, mr);
        unsigned long now = clock_now();
        if (r < 0 || conn.slot != slot)
            ub_printf("call %ld = %ld %ld at %lu\n", i, r, r < 0 ? -1 : mr[1], now);
    }
    return 0;
}
