/* slow_buffer: NOT an attack. The victim server of rows close-mid-call: on {1} its
 * handler marks the shared buffer (buf[0] = MARK), works for several time slices, then
 * uses the buffer again (writes buf[1], reads buf[0]) and answers {buf[0]}; on anything
 * else it answers {7}. It prints nothing: a fault in its handler would end it, and the
 * red team reports the victim gone.
 * Used by src/underbridge/redteam/design_rows.py (CLOSE_ROWS).
 */
#include "attack.h"
#include "ub_ipc.h"

#define MARK 0x6d61726b
#define SPINS 200000 /* about 1,000,000 instructions: several slices (sched.py) */

static void handler(struct ub_msg *msg)
{
    volatile long *buf = msg->buf;
    if (msg->mr[0] != 1) {
        msg->mr[0] = 7;
        return;
    }
    buf[0] = MARK;
    for (volatile long i = 0; i < SPINS; i++)
        ;
    buf[1] = 0xd0e;
    msg->mr[0] = buf[0];
}

int main(void)
{
    long service = ub_ipc_register(VICTIM_SERVICE, handler);
    if (service < 0) {
        ub_printf("slow_buffer: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handler);
}
