/* squatter: an attacker for tests/regress/test_service_squatting.py, not a server.
 *
 * usage: squatter SERVICE   tries to register SERVICE again and again (yielding between
 * tries) until it succeeds or it has tried 100,000 times. A supervised server's name is
 * free for a moment while its server is down: a squatter that took it would receive the
 * calls of every client that reconnects, with their buffers. Its handler answers every
 * call with 0x666 in mr[1]. Prints "squatter: registered" or "squatter: refused <err>".
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

static void answer(struct ub_msg *msg) { msg->mr[1] = 0x666; }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    long service = -1;
    for (long tries = 0; tries < 100000; tries++) {
        service = ub_ipc_register(argv[1], answer);
        if (service != -UB_EEXIST)
            break;
        ub_yield();
    }
    if (service < 0) {
        ub_printf("squatter: refused %ld\n", service);
        return 1;
    }
    ub_printf("squatter: registered\n");
    ub_ipc_serve(service, answer);
    return 0;
}
