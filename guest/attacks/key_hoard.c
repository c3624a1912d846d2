/* key_hoard: an application that tries to use up the protection keys by opening
 * connections to the in-kernel echo server (row key-hoarding; issue 14).
 *
 * When each connection to an in-kernel server took a key of its own, 14 connections
 * took every free key: no other program could connect to an in-kernel server, and no
 * server could be placed in kernel space. It opens HOARD connections to echo, calling
 * each once, and prints "observed: N connections to echo held" (or the first failure).
 * Holding them all, it registers "hoarded" (the signal its partner, key_witness.c,
 * waits for) and waits until the partner registers "witnessed", having connected to
 * echo itself; then "observed: the partner connected meanwhile". Exit status 0.
 */
#include "attack.h"
#include "echo_proto.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define HOARD 40
#define PATIENCE 100000 /* yields before it gives up waiting for the partner */

static struct ub_conn conns[HOARD];

static void handle(struct ub_msg *msg)
{
    msg->mr[0] = 0; /* "hoarded" is a signal only: never called */
}

static long hoard(void)
{
    for (long i = 0; i < HOARD; i++) {
        long r = ub_ipc_connect("echo", &conns[i]);
        long mr[4] = {ECHO_REGS, i, 0, 0};
        if (r == 0)
            r = ub_ipc_call(&conns[i], mr);
        if (r < 0) {
            ub_printf("observed: connection %ld to echo: %ld\n", i, r);
            return i;
        }
    }
    ub_printf("observed: %d connections to echo held\n", HOARD);
    return HOARD;
}

int main(void)
{
    hoard();
    if (ub_ipc_register("hoarded", handle) < 0)
        return 1;
    struct ub_conn witnessed;
    for (long i = 0; i < PATIENCE; i++) {
        if (ub_ipc_connect("witnessed", &witnessed) == 0) {
            ub_printf("observed: the partner connected meanwhile\n");
            return 0;
        }
        ub_yield();
    }
    ub_printf("observed: the partner never said\n");
    return 0;
}
