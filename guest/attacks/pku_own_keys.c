/* pku_own_keys: an application that uses protection keys of its own, then calls echo.
 * (Among the attacks because it holds a wrpkru on purpose: bundled programs hold none.)
 *
 * What it does: it write-protects key 1 for itself with wrpkru (what pkey_set does
 * after pkey_alloc on Linux: an application's own use of PKU), restores PKRU, then
 * connects to the echo server and makes one register-only call.
 * Expected response: under every design where applications own their PKRU (sel4,
 * underbridge, ...), both steps succeed and it exits 0. Under pku-shared the kernel
 * scans it before mapping any server into it, finds the wrpkru, and refuses the
 * connection with -EPERM: it exits 1 and prints the error. That is the design's
 * drawback measured: an application may not keep protection keys for its own use.
 * Checked by: tests/kernel/test_pku_shared.py.
 */
#include "ub.h"
#include "ub_ipc.h"
#include "echo_proto.h"

static void write_pkru(unsigned int value)
{
    __asm__ volatile("wrpkru" ::"a"(value), "c"(0), "d"(0) : "memory");
}

int main(void)
{
    write_pkru(0x8); /* key 1: write-disabled for this application's own data */
    write_pkru(0);
    ub_printf("pku_own_keys: used a protection key of my own\n");
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up("echo", &conn);
    if (r < 0) {
        ub_printf("pku_own_keys: connect to echo refused: %ld\n", r);
        return 1;
    }
    long mr[4] = {ECHO_REGS, 1, 2, 3};
    r = ub_ipc_call(&conn, mr);
    ub_printf("pku_own_keys: echo answered %ld {%ld, %ld, %ld}\n", r, mr[1], mr[2], mr[3]);
    return r == 0 && mr[1] == 1 ? 0 : 1;
}
