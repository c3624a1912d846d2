/* port_handler: a test server (tests/regress/test_trapped_port_io_rights.py), an attack.
 *
 * Registers "ports"; its handler executes `out dx, al` with DX = mr[1], AL = mr[2].
 * Placed in kernel space unrewritten and granted no port, its handler runs on its
 * caller's thread (thread migration); the out is trapped by the secure monitor. A
 * kernel that checked the thread's own cap group would let it use its caller's ports.
 */
#include "ub.h"
#include "ub_ipc.h"

static void handle(struct ub_msg *msg)
{
    unsigned short port = (unsigned short)msg->mr[1];
    unsigned char value = (unsigned char)msg->mr[2];
    __asm__ volatile("out %0, %1" : : "a"(value), "Nd"(port));
    msg->mr[0] = 0;
}

int main(void)
{
    long service = ub_ipc_register("ports", handle);
    if (service < 0) {
        ub_printf("port_handler: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
