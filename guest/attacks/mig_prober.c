/* mig_prober: a server moved out of kernel space tries its old kernel-space addresses.
 *
 * The attack: we are an in-kernel server (ATTACK_SERVICE); argv[1] is a live address on
 * echo's stack, which we could never read (echo's key), and argv[2] the current-thread
 * word, a supervisor page every ring-0 server may read. The red team has the kernel
 * move us out to user space as soon as we wait for calls; then our partner
 * (mig_caller.c) calls us, and our handler, now in ring 3 on our own page table,
 * reads echo's stack and then the current-thread word at the addresses we had.
 * A naive move-out only drops us to ring 3 with an open PKRU (0, as for applications)
 * on the page table we ran on: every in-kernel server's pages are user pages there,
 * so echo's stack would be ours to read.
 * Expected response: #PF, page not present, in ring 3, reading echo's stack (our new
 * page table maps nothing but our own); the kernel ends us, and our caller's call
 * returns -EPIPE (-32).
 * Checked by: tests/test_redteam_migration.py (row mig-old-addresses).
 */
#include "attack.h"
#include "ub_ipc.h"

static unsigned long echo_stack, thread_word;

static void handler(struct ub_msg *msg)
{
    attack_read(echo_stack, "echo's stack");
    attack_read(thread_word, "the current-thread word");
    msg->mr[0] = 0x4c45414b; /* "LEAK": the reads went through */
}

int main(int argc, char **argv)
{
    echo_stack = attack_arg(argc, argv, 1);
    thread_word = attack_arg(argc, argv, 2);
    long service = ub_ipc_register(ATTACK_SERVICE, handler);
    if (service < 0) {
        ub_printf("mig_prober: cannot register: %ld\n", service);
        return 1;
    }
    ub_ipc_serve(service, handler);
}
