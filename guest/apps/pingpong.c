/* pingpong: an IPC client of the echo server, and the IPC benchmark's workload.
 *
 * usage: pingpong ROUNDS [SERVICE] [--as-server]
 *
 * Connects to SERVICE (default "echo"), makes ROUNDS ECHO_REGS calls checking each
 * reply, then one ECHO_BUF call through the shared buffer, and prints
 * "pingpong: ROUNDS rounds ok". With --as-server it first registers a service of its
 * own (never served), so its calls are server-to-server calls. Exit status: 0 if every
 * reply was right, 1 if not, 2 for bad usage.
 *
 * Timing markers for the benchmark: a zero-length write (no output) right before the
 * ECHO_REGS loop, one right after it, and one more straight after that; the kernel sees
 * each as a syscall whatever the IPC placement, and the third measures the marker's own
 * cost (bench/ipc.py).
 */
#include "ub.h"
#include "ub_ipc.h"
#include "echo_proto.h"

#define RELAY_SERVICE "pingpong-relay"
#define BUF_BYTES 257 /* odd, so the middle byte stays put when reversed */

static int usage(void)
{
    ub_printf("usage: pingpong ROUNDS [SERVICE] [--as-server]\n");
    return 2;
}

/* The relay service is only held, never served: this handler exists because a
 * service is registered with its handler's address. */
static void relay_handle(struct ub_msg *msg)
{
    msg->mr[0] = -UB_EINVAL;
}

/* Out of line, so the call loop stays tight. */
static int bad_reply(long round, long r, const long want[4], const long got[4])
{
    if (r < 0) {
        ub_printf("pingpong: round %ld: call failed: %ld\n", round, r);
        return 1;
    }
    ub_printf("pingpong: round %ld: sent {%ld, %ld, %ld, %ld}, got {%ld, %ld, %ld, %ld}\n",
              round, want[0], want[1], want[2], want[3], got[0], got[1], got[2], got[3]);
    return 1;
}

/* ROUNDS register-only calls; the kernel times the gap between consecutive calls. */
static int regs_rounds(const struct ub_conn *conn, long rounds)
{
    for (long i = 0; i < rounds; i++) {
        long mr[4] = {ECHO_REGS, i, ~i, 42};
        long r = ub_ipc_call(conn, mr);
        if (r < 0 || mr[0] != ECHO_REGS || mr[1] != i || mr[2] != ~i || mr[3] != 42) {
            long want[4] = {ECHO_REGS, i, ~i, 42};
            return bad_reply(i, r, want, mr);
        }
    }
    return 0;
}

static unsigned char pattern(long k)
{
    return (unsigned char)(k * 7 + 3);
}

/* One ECHO_BUF call: the server must reverse BUF_BYTES bytes of the shared buffer. */
static int buf_round(const struct ub_conn *conn, long round)
{
    unsigned char *buf = conn->buf;
    long n = BUF_BYTES;

    if ((unsigned long)n > conn->buf_size) {
        ub_printf("pingpong: shared buffer of %lu bytes is too small\n", conn->buf_size);
        return 1;
    }
    for (long k = 0; k < n; k++)
        buf[k] = pattern(k);

    long mr[4] = {ECHO_BUF, n, 0, 0};
    long r = ub_ipc_call(conn, mr);
    if (r < 0 || mr[0] != 0 || mr[1] != n) {
        long want[4] = {0, n, 0, 0};
        return bad_reply(round, r, want, mr);
    }
    for (long k = 0; k < n; k++) {
        if (buf[k] != pattern(n - 1 - k)) {
            ub_printf("pingpong: buffer byte %ld is %u, want %u\n", k, buf[k],
                      pattern(n - 1 - k));
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *pos[2]; /* ROUNDS, SERVICE */
    int npos = 0;
    int as_server = 0;

    for (int i = 1; i < argc; i++) {
        if (ub_streq(argv[i], "--as-server"))
            as_server = 1;
        else if (npos < 2)
            pos[npos++] = argv[i];
        else
            return usage();
    }
    long rounds = npos > 0 ? ub_parse_count(pos[0]) : -1;
    if (rounds < 0)
        return usage();
    const char *service = npos > 1 ? pos[1] : ECHO_SERVICE;

    if (as_server) {
        long r = ub_ipc_register(RELAY_SERVICE, relay_handle);
        if (r < 0) {
            ub_printf("pingpong: cannot register %s: %ld\n", RELAY_SERVICE, r);
            return 1;
        }
    }

    struct ub_conn conn;
    long r = ub_ipc_connect(service, &conn);
    if (r < 0) {
        ub_printf("pingpong: cannot connect to %s: %ld\n", service, r);
        return 1;
    }

    ub_write("", 0);
    int failed = regs_rounds(&conn, rounds);
    ub_write("", 0);
    ub_write("", 0);
    if (failed || buf_round(&conn, rounds))
        return 1;
    ub_printf("pingpong: %ld rounds ok\n", rounds);
    return 0;
}
