/* stuck_server: a test server (tests/kernel/test_clean_failure.py), not an attack.
 *
 * usage: stuck_server   registers "stuck"; its handler answers {0} with {7}, spins
 * forever on {1} (a call in progress for as long as the test likes), and faults on {2}
 * (reads address 0x10, which nothing maps).
 */
#include "ub.h"
#include "ub_ipc.h"

static void handle(struct ub_msg *msg)
{
    switch (msg->mr[0]) {
    case 1:
        for (;;)
            __asm__ volatile("" ::: "memory");
    case 2:
        msg->mr[0] = *(volatile long *)0x10;
        return;
    default:
        msg->mr[0] = 7;
    }
}

int main(void)
{
    long service = ub_ipc_register("stuck", handle);
    if (service < 0) {
        ub_printf("stuck_server: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
