/* secret_server: NOT an attack. The victim of pkru_refresh.c (row pkru-refresh): an
 * in-kernel server with a secret in its own memory and a service of its own.
 *
 * It registers VICTIM_SERVICE, connects to the attacker's ATTACK_SERVICE (retrying
 * until it exists) and makes one call through its gate with the address of its secret
 * in mr[1] (an address is no permission: the attacker's PKRU must not open it). It
 * prints "victim: call = <result>" and then blocks for good on a notification.
 * `secret` is exported: the red team publishes its address as target partner_secret.
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

char secret[16] = "S's secret 4242";

static void handle(struct ub_msg *msg)
{
    msg->mr[0] = 0;
}

int main(void)
{
    long service = ub_ipc_register(VICTIM_SERVICE, handle);
    if (service < 0) {
        ub_printf("victim: cannot register: %ld\n", service);
        return 1;
    }
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up(ATTACK_SERVICE, &conn);
    if (r < 0) {
        ub_printf("victim: cannot connect: %ld\n", r);
        return 1;
    }
    long mr[4] = {0, (long)secret, 0, 0};
    r = ub_ipc_call(&conn, mr);
    ub_printf("victim: call = %ld\n", r);
    ub_notif_wait(ub_notif_create());
    return 1;
}
