/* sky_stray: a SkyBridge client with a stray vmfunc (red-team row sky-stray-vmfunc),
 * an attack that would work on a kernel that binds without scanning.
 *
 * The attack: `vmfunc` (0F 01 D4) hidden in an immediate (mov eax, 0xd4010f): a jump
 * into its second byte would switch to any server in our EPTP list at an address of
 * our choosing, past the trampoline's checks.
 * Expected response: the kernel's scan finds it at connect and refuses to bind us:
 * prints "observed: connect = -1 gate = 0" (-EPERM); no trampoline is mapped.
 * Checked by: redteam row sky-stray-vmfunc, tests/kernel/test_skybridge.py.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

__attribute__((used, noinline)) static unsigned int hidden(void)
{
    unsigned int v;
    __asm__ volatile("mov $0xd4010f, %0" : "=a"(v));
    return v;
}

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up("echo", &conn);
    ub_printf("observed: connect = %ld gate = %lx\n", r, r < 0 ? 0UL : conn.gate);
    return (int)hidden() == 0;
}
