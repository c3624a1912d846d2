/* deputy_names: have the kernel read another domain's memory for us through a name or
 * argument pointer (a confused deputy, PKU Pitfalls' "kernel reads on the attacker's
 * behalf ignoring PKRU"; deputy.c does it with WRITE and WAIT).
 *
 * usage: deputy_names register|connect|spawn ECHO_STACK CONTROL
 * The attack: argv[2] is a live address on echo's stack (echo's key), argv[3] the
 * control page of another client's connection to echo (that connection's key). The
 * chosen syscall (IPC_REGISTER, IPC_CONNECT, or SPAWN, which also takes an argument
 * block) gets those addresses as its name pointer: a kernel that copies the name with
 * its own rights would read them (and a SPAWN that failed on an unknown name would
 * still have read it, so its result would tell us about the bytes). The same syscall
 * with a name in our own memory comes first, to show the channel works.
 * Expected response: none from the hardware; every foreign pointer is refused with
 * -EFAULT (-14), because its protection key is closed in our PKRU. We keep running and
 * report each result as an "observed:" line.
 * Checked by: tests/test_redteam.py::test_row[deputy-register, deputy-connect, deputy-spawn].
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define NAME_LEN 8 /* of a foreign "name" */

static long by_name(const char *mode, const char *name, long len, const char *args)
{
    if (ub_streq(mode, "register"))
        return ub_syscall3(UB_SYS_IPC_REGISTER, (long)name, len, 0x1000);
    if (ub_streq(mode, "connect"))
        return ub_syscall2(UB_SYS_IPC_CONNECT, (long)name, len);
    return ub_spawn_raw(name, (unsigned long)len, args, args ? NAME_LEN : 0);
}

static void check(const char *mode, const char *what, long r, int foreign)
{
    if (r >= 0 && !foreign)
        ub_printf("observed: %s(%s) ok\n", mode, what);
    else
        ub_printf("observed: %s(%s) = %ld\n", mode, what, r);
    if (r >= 0 && foreign)
        ub_printf("LEAKED: the kernel read %s for our %s\n", what, mode);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const char *echo = (const char *)attack_arg(argc, argv, 2);
    const char *control = (const char *)attack_arg(argc, argv, 3);
    /* in our own memory: a service name of our own, echo's (to connect to), a program */
    const char *mine = ub_streq(mode, "register") ? "redteam"
                       : ub_streq(mode, "connect") ? "echo"
                                                   : "hello";

    if (!ub_streq(mode, "register") && !ub_streq(mode, "connect") && !ub_streq(mode, "spawn")) {
        ub_printf("usage: deputy_names register|connect|spawn ECHO_STACK CONTROL\n");
        return 2;
    }
    check(mode, "own memory", by_name(mode, mine, (long)strlen(mine), NULL), 0);
    check(mode, "name in echo's stack", by_name(mode, echo, NAME_LEN, NULL), 1);
    check(mode, "name in the control page", by_name(mode, control, NAME_LEN, NULL), 1);
    if (ub_streq(mode, "spawn")) {
        check(mode, "arguments in echo's stack", by_name(mode, mine, 5, echo), 1);
        check(mode, "arguments in the control page", by_name(mode, mine, 5, control), 1);
    }
    return 0;
}
