/* relay: a test server (tests/kernel/test_calls_in_progress.py), not an attack.
 *
 * usage: relay DOWNSTREAM   connects to service DOWNSTREAM (retrying until it exists),
 * registers "relay" and forwards each call's mr[] to DOWNSTREAM; its reply is
 * {status of the forwarded call, reply mr0, mr1, mr2}. In kernel space the forwarded
 * call is a gate call made inside a gate call: a nested call on the caller's thread.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static struct ub_conn down;

static void handle(struct ub_msg *msg)
{
    long mr[4] = {msg->mr[0], msg->mr[1], msg->mr[2], msg->mr[3]};
    long r = ub_ipc_call(&down, mr);
    msg->mr[0] = r;
    msg->mr[1] = mr[0];
    msg->mr[2] = mr[1];
    msg->mr[3] = mr[2];
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        ub_printf("usage: relay DOWNSTREAM\n");
        return 2;
    }
    long r = ub_ipc_connect_when_up(argv[1], &down);
    if (r < 0) {
        ub_printf("relay: cannot connect to %s: %ld\n", argv[1], r);
        return 1;
    }
    long service = ub_ipc_register("relay", handle);
    if (service < 0) {
        ub_printf("relay: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
