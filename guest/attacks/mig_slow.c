/* mig_slow: NOT an attack. The victim server of row mig-race: its handler works for
 * longer than a time slice (so in user space a call is often preempted mid-handler, and
 * another caller's call is queued meanwhile), then replies with mr[1] + 1.
 * Used by src/underbridge/redteam/migration_rows.py.
 */
#include "attack.h"
#include "ub_ipc.h"

#define SPINS 60000 /* about 300,000 instructions: more than one slice (sched.py) */

static void handler(struct ub_msg *msg)
{
    for (volatile long i = 0; i < SPINS; i++)
        ;
    msg->mr[1] += 1;
}

int main(void)
{
    long service = ub_ipc_register(VICTIM_SERVICE, handler);
    if (service < 0) {
        ub_printf("mig_slow: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handler);
}
