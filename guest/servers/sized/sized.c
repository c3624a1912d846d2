/* sized: an echo server of a chosen size, for measuring migration against size.
 *
 * usage: sized [SERVICE]   registers SERVICE (default "sized") and echoes every request.
 *
 * Its size is fixed when it is built: BALLAST_PAGES pages of data (sized_pages.h, which
 * the benchmark writes into an include directory of its own, bench/migrate_cost.py; 0
 * without it), each written once before serving, so every page is a present, private
 * page of the server.
 */
#include "ub.h"
#include "ub_ipc.h"
#if __has_include("sized_pages.h")
#include "sized_pages.h"
#else
#define BALLAST_PAGES 0 /* built on its own (every program is scanned by the tests) */
#endif

static volatile char ballast[(BALLAST_PAGES + 1) * 4096];

static void handle(struct ub_msg *msg)
{
    (void)msg; /* the reply is the request */
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "sized";
    for (long page = 0; page < BALLAST_PAGES; page++)
        ballast[page * 4096] = (char)page;
    long service = ub_ipc_register(name, handle);
    if (service < 0) {
        ub_printf("sized: cannot register %s: %ld\n", name, service);
        return 1;
    }
    ub_ipc_serve(service, handle);
}
