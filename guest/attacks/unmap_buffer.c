/* unmap_buffer: a server unmaps its client's connection buffer.
 *
 * The attack: we are in-kernel server R (ATTACK_SERVICE). The victim V
 * (victim_client.c, mode "buffer"), an in-kernel client, connects to us; its first
 * call (OP_HELLO) shows our handler the connection's shared buffer. Our main thread
 * then asks the kernel to unmap that buffer (PMO_UNMAP): the kernel mapped it into our
 * address space, which for an in-kernel server is the kernel page table that V runs on
 * as well, so a kernel that lets us would take it from V too, and V's next write to its
 * own buffer would fault.
 * Expected response: none from the hardware; the connection's buffer mappings belong to
 * the kernel, so PMO_UNMAP returns -EPERM (-1): we report "observed: unmap = -1" and
 * exit 0 once V is done, and V writes its buffer and gets it checked by us ("victim:
 * buffer ok").
 * Checked by: tests/regress/test_server_unmaps_client_buffer.py (row unmap-buffer).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define PATIENCE 5000 /* yields to wait for the client's goodbye */

static volatile unsigned long client_buf;
static volatile long tried, bye;

static void handler(struct ub_msg *msg)
{
    volatile char *buf = msg->buf;

    switch (msg->mr[0]) {
    case OP_HELLO:
        client_buf = (unsigned long)msg->buf;
        msg->mr[0] = 0;
        break;
    case OP_POLL:
        msg->mr[0] = tried;
        break;
    case OP_CHECK:
        msg->mr[0] = buf[0] == 'o' && buf[1] == 'k';
        break;
    case OP_BYE:
        bye = 1;
        msg->mr[0] = 0;
        break;
    default:
        msg->mr[0] = -UB_EINVAL;
        break;
    }
}

int main(void)
{
    long service = ub_ipc_register(ATTACK_SERVICE, handler);
    if (service < 0) {
        ub_printf("unmap_buffer: cannot register: %ld\n", service);
        return 1;
    }
    while (!client_buf)
        ub_yield();
    long r = ub_pmo_unmap((void *)client_buf);
    ub_printf("observed: unmap = %ld\n", r);
    if (r >= 0)
        ub_printf("LEAKED: unmapped the shared buffer of my client at %p\n", (void *)client_buf);
    tried = 1;
    for (int i = 0; i < PATIENCE && !bye; i++)
        ub_yield();
    if (!bye)
        ub_printf("observed: the client never said goodbye\n");
    return 0;
}
