/* conncycle: connect to a service, call it once, close the connection; N times.
 *
 * usage: conncycle CYCLES [SERVICE] [--keep]
 *
 * Each cycle connects to SERVICE (default "echo"), makes one ECHO_REGS call and checks
 * the reply, writes a byte into the shared buffer, and closes the connection by
 * deleting its cap (CAP_DELETE of the connection slot closes it). With --keep the last
 * connection is left open, so the kernel must close it when the program ends. Every
 * cycle's connection must get the first cycle's cap slot (slots are reused lowest
 * first, so a different one means a slot was not freed). Prints "conncycle: CYCLES
 * cycles ok". Exit status: 0 if every cycle worked, 1 if not, 2 for bad usage. The
 * frame-leak tests (tests/kernel/test_conn_cycles.py) count the machine's frames
 * around it.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"
#include "echo_proto.h"

static int usage(void)
{
    ub_printf("usage: conncycle CYCLES [SERVICE] [--keep]\n");
    return 2;
}

static long first_slot = -1;

/* One connect, call, close; the last one stays open if `keep`. 0 or 1 (reported). */
static int cycle(const char *service, long i, int keep)
{
    struct ub_conn conn;
    long r = ub_ipc_connect(service, &conn);
    if (r < 0) {
        ub_printf("conncycle: cycle %ld: cannot connect to %s: %ld\n", i, service, r);
        return 1;
    }
    if (first_slot < 0)
        first_slot = conn.slot;
    if (conn.slot != first_slot) {
        ub_printf("conncycle: cycle %ld: slot %ld, the first cycle's was %ld\n", i, conn.slot,
                  first_slot);
        return 1;
    }
    ((volatile unsigned char *)conn.buf)[0] = (unsigned char)i;
    long mr[4] = {ECHO_REGS, i, ~i, 7};
    r = ub_ipc_call(&conn, mr);
    if (r < 0 || mr[0] != ECHO_REGS || mr[1] != i || mr[2] != ~i || mr[3] != 7) {
        ub_printf("conncycle: cycle %ld: call gave %ld {%ld, %ld, %ld, %ld}\n", i, r, mr[0],
                  mr[1], mr[2], mr[3]);
        return 1;
    }
    if (keep)
        return 0;
    r = ub_cap_delete(conn.slot);
    if (r < 0) {
        ub_printf("conncycle: cycle %ld: cannot close slot %ld: %ld\n", i, conn.slot, r);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *pos[2]; /* CYCLES, SERVICE */
    int npos = 0;
    int keep = 0;

    for (int i = 1; i < argc; i++) {
        if (ub_streq(argv[i], "--keep"))
            keep = 1;
        else if (npos < 2)
            pos[npos++] = argv[i];
        else
            return usage();
    }
    long cycles = npos > 0 ? ub_parse_count(pos[0]) : -1;
    if (cycles < 0)
        return usage();
    const char *service = npos > 1 ? pos[1] : ECHO_SERVICE;

    for (long i = 0; i < cycles; i++) {
        if (cycle(service, i, keep && i == cycles - 1))
            return 1;
    }
    ub_printf("conncycle: %ld cycles ok\n", cycles);
    return 0;
}
