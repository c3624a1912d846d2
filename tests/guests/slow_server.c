/* slow_server: a test server (tests/regress/test_close_during_a_call.py), not an attack.
 *
 * usage: slow_server   registers "slow"; its handler answers {0} with {7}; on {1} it
 * marks its shared buffer (buf[0] = STARTED, which its client polls), works for a while
 * (SPINS iterations: several time slices), then uses the buffer again (writes buf[1],
 * reads buf[0]) and answers {buf[0]}. A client that closes the connection meanwhile
 * must not take the buffer out from under it (kernel/orphans.py).
 */
#include "ub.h"
#include "ub_ipc.h"

#define STARTED 0x57a27ed
#define SPINS 200000 /* about 1,000,000 instructions: several slices (sched.py) */

static void handle(struct ub_msg *msg)
{
    volatile long *buf = msg->buf;
    if (msg->mr[0] != 1) {
        msg->mr[0] = 7;
        return;
    }
    buf[0] = STARTED;
    for (volatile long i = 0; i < SPINS; i++)
        ;
    buf[1] = 0xd0e;
    msg->mr[0] = buf[0];
}

int main(void)
{
    long service = ub_ipc_register("slow", handle);
    if (service < 0) {
        ub_printf("slow_server: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
