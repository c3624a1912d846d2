/* chantest: Zircon-style channels used directly (tests/kernel/test_channels.py).
 *
 * usage: chantest            the parent: makes a channel, spawns "chantest child",
 *                            grants it one endpoint, then talks to it;
 *        chantest child      the child: finds the endpoint it was granted and serves.
 * Parent and child print one line per step; the test compares the whole output.
 * Steps: a message carrying a handle (the second channel's endpoint, which leaves the
 * parent's table), an answer through that transferred endpoint, a channel_call whose
 * reply carries the call's txid while a decoy with another id queues instead, the
 * child waiting through a port, and, once the child is gone, PEER_CLOSED everywhere.
 */
#include "ub.h"
#include "ub_channel.h"
#include "ub_sys.h"

#define DECOY_TXID 0x1234

struct req {
    unsigned int txid;
    unsigned int a, b;
};

static long find_granted_endpoint(void)
{
    for (;;) {
        for (long slot = 0; slot < 8; slot++)
            if (ub_cap_info(slot) > 0 && (ub_cap_info(slot) >> 16) == UB_OBJ_CHANNEL)
                return slot;
        ub_yield();
    }
}

static int child(void)
{
    long ep = find_granted_endpoint();
    char buf[64];
    long handles[4], nh;

    long sig = ub_object_wait(ep, UB_SIGNAL_READABLE);
    long n = ub_channel_read(ep, buf, sizeof buf, handles, 4, &nh);
    ub_printf("child: wait %ld, read %ld bytes '%s', %ld handle(s), type %ld\n", sig, n, buf,
              nh, nh == 1 ? ub_cap_info(handles[0]) >> 16 : -1);
    static const char hello[] = "hello through a transferred handle";
    ub_printf("child: write on it = %ld\n",
              ub_channel_write(handles[0], hello, sizeof hello, 0, 0));

    long port = ub_port_create();
    unsigned long key = 0, signals = 0;
    ub_object_wait_async(ep, port, 42, UB_SIGNAL_READABLE);
    long r = ub_port_wait(port, &key, &signals);
    struct req req;
    n = ub_channel_read(ep, &req, sizeof req, 0, 0, &nh);
    ub_printf("child: port %ld key %lu signals %lu, call %ld bytes: %u + %u, txid has top bit %d\n",
              r, key, signals, n, req.a, req.b, (int)(req.txid >> 31));
    struct req decoy = {DECOY_TXID, 0, 0};
    ub_channel_write(ep, &decoy, sizeof decoy, 0, 0);
    struct req reply = {req.txid, req.a + req.b, 0};
    ub_channel_write(ep, &reply, sizeof reply, 0, 0);
    ub_cap_delete(ep); /* closes the endpoint; the transferred one closes when we exit */
    return 0;
}

static int parent(void)
{
    long a, b, x, y, nh;
    char buf[64];

    ub_channel_create(&a, &b);
    ub_channel_create(&x, &y);
    const char *argv[] = {"child", 0};
    long kid = ub_spawn("chantest", argv);
    ub_cap_grant(kid, b, 0x7f); /* every right */

    static const char take[] = "take this";
    ub_printf("parent: write own endpoint = %ld\n", ub_channel_write(a, take, 1, &a, 1));
    ub_printf("parent: read empty = %ld\n", ub_channel_read(x, buf, sizeof buf, 0, 0, &nh));
    long w = ub_channel_write(a, take, sizeof take, &y, 1);
    ub_printf("parent: write with handle = %ld, sent slot now %ld\n", w, ub_cap_info(y));
    long sig = ub_object_wait(x, UB_SIGNAL_READABLE);
    long n = ub_channel_read(x, buf, sizeof buf, 0, 0, &nh);
    ub_printf("parent: wait %ld, read %ld bytes '%s'\n", sig, n, buf);

    struct req req = {0, 2, 3}, reply = {0, 0, 0};
    struct ub_channel_call_args args = {&req, 0, sizeof req, 0, &reply, 0, sizeof reply, 0};
    n = ub_channel_call(a, &args, &nh);
    ub_printf("parent: call %ld bytes, sum %u\n", n, reply.a);
    struct req decoy;
    n = ub_channel_read(a, &decoy, sizeof decoy, 0, 0, &nh);
    ub_printf("parent: then read %ld bytes, txid %ld\n", n, (long)decoy.txid);

    struct ub_exit_info info;
    ub_wait(kid, &info);
    long on_a = ub_object_wait(a, UB_SIGNAL_PEER_CLOSED);
    long on_x = ub_object_wait(x, UB_SIGNAL_PEER_CLOSED);
    ub_printf("parent: child exited %ld; a %ld, x %ld\n", info.value, on_a, on_x);
    w = ub_channel_write(a, take, 1, 0, 0);
    n = ub_channel_read(a, buf, sizeof buf, 0, 0, &nh);
    long c = ub_channel_call(a, &args, &nh);
    ub_printf("parent: write %ld, read %ld, call %ld\n", w, n, c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && argv[1][0] == 'c')
        return child();
    return parent();
}
