/* deputy: ask the kernel to read and write, for us, memory we cannot reach (a confused
 * deputy; tests/regress/test_confused_deputy.py has the bug this once was).
 *
 * The attack: argv[1] is a live address on echo's stack, argv[2] another client's gate
 * to echo (key 0), argv[3] that connection's control page (its call tokens; the
 * connection's key). The kernel copies syscall buffers itself, so: WRITE echo's stack and
 * the gate's code to the console (a read by the kernel), and WAIT on a child with the
 * exit record aimed at echo's stack and at the control page (a write by the kernel,
 * which would forge a call token). A WAIT into our own memory comes first, to show the
 * channel works.
 * Expected response: none from the hardware; every foreign buffer is refused with
 * -EFAULT (-14) because its protection key is closed in the caller's PKRU. The attacker
 * keeps running and reports each result as an "observed:" line.
 * Checked by: tests/test_redteam.py::test_row[deputy].
 */
#include "attack.h"
#include "ub_sys.h"

static void check(const char *what, long r)
{
    ub_printf("observed: %s = %ld\n", what, r);
    if (r >= 0)
        ub_printf("LEAKED: the kernel did %s for us\n", what);
}

int main(int argc, char **argv)
{
    unsigned long echo = attack_arg(argc, argv, 1);
    unsigned long gate = attack_arg(argc, argv, 2);
    unsigned long control = attack_arg(argc, argv, 3);
    struct ub_exit_info info;

    check("write(echo's stack)", ub_write((void *)echo, 16));
    check("write(gate code)", ub_write((void *)gate, 16));
    long child = ub_spawn("hello", 0);
    if (child < 0) {
        ub_printf("deputy: cannot spawn hello: %ld\n", child);
        return 1;
    }
    long r = ub_wait(child, &info);
    ub_printf("observed: wait(own memory) = %ld\n", r);
    r = ub_wait(child, (struct ub_exit_info *)echo);
    check("wait(into echo's stack)", r);
    r = ub_wait(child, (struct ub_exit_info *)control);
    check("wait(into the control page)", r);
    return 0;
}
