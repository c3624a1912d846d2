/* echo: a server that returns its requests (protocol in echo_proto.h).
 *
 * usage: echo [SERVICE]   registers SERVICE (default "echo") and serves it forever.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "echo_proto.h"

/* Reverse buf[0..n) in place. */
static void reverse(char *buf, long n)
{
    for (long i = 0, j = n - 1; i < j; i++, j--) {
        char c = buf[i];
        buf[i] = buf[j];
        buf[j] = c;
    }
}

static void handle(struct ub_msg *msg)
{
    long n;

    switch (msg->mr[0]) {
    case ECHO_REGS:
        break; /* the reply is the request */
    case ECHO_BUF:
        /* REPLY_WAIT does not say how big the buffer is; ECHO_BUF_MAX is below any
         * connection's buffer, so capping n keeps us inside it. */
        n = msg->mr[1];
        if (n < 0)
            n = 0;
        if (n > ECHO_BUF_MAX)
            n = ECHO_BUF_MAX;
        reverse(msg->buf, n);
        msg->mr[0] = 0;
        msg->mr[1] = n;
        break;
    default:
        msg->mr[0] = -UB_EINVAL;
        break;
    }
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : ECHO_SERVICE;

    long service = ub_ipc_register(name, handle);
    if (service < 0) {
        ub_printf("echo: cannot register %s: %ld\n", name, service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
