/* pku_shared_wrpkru: an application under pku-shared opens every protection key with its
 * own wrpkru, then tries to reach a server's memory (red-team row pku-shared-wrpkru).
 *
 * The attack: under pku-shared every placed server's pages are copied into each
 * application that connects to it, guarded only by the PKRU the kernel gives it. With
 * PKRU = 0 (all keys open, what its own wrpkru sets) a joined application could read
 * and write every server's memory. So it sets PKRU = 0, connects to echo, and reads
 * argv[1] (a live address on echo's stack).
 * What the design guarantees (kernel/ipc/pku_shared.py, shared_view.py): a connection
 * joins the shared view only after a scan of the application's code; a wrpkru there
 * refuses it with -EPERM, and nothing of a server is mapped into it before it joins.
 * Expected response: "observed: connect = -1" (-EPERM), then #PF not present on the
 * read, in ring 3: its open PKRU gains it nothing, since no server page is mapped.
 * On a kernel that joined without scanning, the read would succeed (LEAKED).
 * Checked by: redteam row pku-shared-wrpkru.
 */
#include "attack.h"
#include "ub_ipc.h"

int main(int argc, char **argv)
{
    unsigned long target = attack_arg(argc, argv, 1);
    __asm__ volatile("wrpkru" ::"a"(0), "c"(0), "d"(0) : "memory");
    struct ub_conn conn;
    ub_printf("observed: connect = %ld\n", ub_ipc_connect("echo", &conn));
    return attack_read(target, "echo's stack");
}
