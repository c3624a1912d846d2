/* router: an application that spreads calls over many small servers, in phases whose
 * call mix shifts (the placement benchmark's workload, bench/migrate.py).
 *
 * usage: router SERVERS PHASES CALLS [HOT]
 *
 * Connects to the echo services s00 .. s<SERVERS-1> (each its own server), then runs
 * PHASES phases of CALLS ECHO_REGS calls each, checking every reply. In phase p, 15 of
 * every 16 calls go to the phase's HOT servers (default 8): s<p*HOT mod SERVERS> and
 * the next HOT-1 (wrapping); the rest go to any server. Which server a call goes to
 * comes from a fixed pseudo-random sequence (xorshift64, fixed seed): every run makes
 * the same calls. A zero-length write (a marker, bench/markers.py) starts each phase,
 * and one more ends the last. Prints "router: PHASES phases ok". Exit status: 0 if
 * every reply was right, 1 if not, 2 for bad usage.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "echo_proto.h"

#define MAX_SERVERS 64

static struct ub_conn conns[MAX_SERVERS];
static unsigned long state = 0x9E3779B97F4A7C15UL;

static unsigned long next_random(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static int usage(void)
{
    ub_printf("usage: router SERVERS PHASES CALLS [HOT]\n");
    return 2;
}

static int connect_all(long servers)
{
    char name[4] = {'s', '0', '0', 0};
    for (long i = 0; i < servers; i++) {
        name[1] = (char)('0' + i / 10);
        name[2] = (char)('0' + i % 10);
        long r = ub_ipc_connect_when_up(name, &conns[i]);
        if (r < 0) {
            ub_printf("router: cannot connect to %s: %ld\n", name, r);
            return 1;
        }
    }
    return 0;
}

static int phase(long p, long servers, long calls, long hot)
{
    for (long i = 0; i < calls; i++) {
        unsigned long r = next_random();
        long target = (r & 15) ? (p * hot + (long)((r >> 4) % (unsigned long)hot)) % servers
                               : (long)((r >> 4) % (unsigned long)servers);
        long mr[4] = {ECHO_REGS, target, i, p};
        long ret = ub_ipc_call(&conns[target], mr);
        if (ret < 0 || mr[0] != ECHO_REGS || mr[1] != target || mr[2] != i || mr[3] != p) {
            ub_printf("router: phase %ld call %ld to s%ld gave %ld\n", p, i, target, ret);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5)
        return usage();
    long servers = ub_parse_count(argv[1]);
    long phases = ub_parse_count(argv[2]);
    long calls = ub_parse_count(argv[3]);
    long hot = argc == 5 ? ub_parse_count(argv[4]) : 8;
    if (servers < 1 || servers > MAX_SERVERS || phases < 1 || calls < 1 || hot < 1 ||
        hot > servers)
        return usage();
    if (connect_all(servers))
        return 1;
    for (long p = 0; p < phases; p++) {
        ub_write("", 0); /* marker: phase p starts */
        if (phase(p, servers, calls, hot))
            return 1;
    }
    ub_write("", 0); /* marker: the last phase ends */
    ub_printf("router: %ld phases ok\n", phases);
    return 0;
}
