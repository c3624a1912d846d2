/* key_witness: NOT an attack. The partner of key_hoard.c (row key-hoarding): an
 * in-kernel server that connects to echo while the attacker holds its connections.
 *
 * It waits until the attacker registers "hoarded", then connects to echo (a new pair
 * of in-kernel servers: it needs a key) and calls it, and prints "victim: echo
 * answered" (or what failed). It registers "witnessed" for the attacker and then blocks
 * for good on a notification.
 */
#include "attack.h"
#include "echo_proto.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static void handle(struct ub_msg *msg)
{
    msg->mr[0] = 0; /* "witnessed" is a signal only: never called */
}

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up("hoarded", &conn);
    if (r == 0)
        r = ub_ipc_connect("echo", &conn);
    long mr[4] = {ECHO_REGS, 7, 8, 9};
    if (r == 0)
        r = ub_ipc_call(&conn, mr);
    if (r == 0 && mr[1] == 7 && mr[2] == 8 && mr[3] == 9)
        ub_printf("victim: echo answered\n");
    else
        ub_printf("victim: connect or call to echo: %ld\n", r);
    if (ub_ipc_register("witnessed", handle) < 0)
        return 1;
    ub_notif_wait(ub_notif_create());
    return 1;
}
