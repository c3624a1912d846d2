/* sky_nokey: a SkyBridge client that calls its server without the calling key
 * (red-team row sky-no-key), an attack that would work on a trampoline
 * without the key check.
 *
 * The attack: connect to echo, find the call half's `vmfunc` in our trampoline (the
 * first 0F 01 D4; the `mov ecx, imm32` before it names the server's EPTP index) and
 * call straight onto it with a guessed key in R11, skipping the call half. The request
 * is ECHO_BUF on "abc" in the shared buffer, so a run of echo's function would leave
 * "cba" there.
 * Expected response: the server half finds no calling key, switches straight back and
 * returns -EPERM (-1) without running echo's function: the buffer still reads "abc".
 * A genuine call afterwards works.
 * Prints "observed: nokey = <status> buffer = <buffer>" then
 * "observed: call = <status> mr1 = <mr1>".
 * Checked by: redteam row sky-no-key, tests/kernel/test_skybridge.py.
 */
#include "echo_proto.h"
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"

/* The trampoline's convention (ub_ipc.h): mr[0] in RSI, mr[1] in RDI. */
static long call_without_key(unsigned long at, unsigned long index, long key, long op, long n)
{
    long ret;
    register long r11 __asm__("r11") = key;
    register long rsi __asm__("rsi") = op;
    register long rdi __asm__("rdi") = n;
    __asm__ volatile("xor %%eax, %%eax\n\tcall *%[at]"
                     : "=&a"(ret), "+r"(r11), "+c"(index), "+r"(rsi), "+r"(rdi)
                     : [at] "r"(at)
                     : "rdx", "r8", "r9", "r10", "memory", "cc");
    return ret;
}

int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect_when_up("echo", &conn);
    if (r < 0 || !conn.gate) {
        ub_printf("sky_nokey: cannot connect: %ld\n", r);
        return 1;
    }
    const unsigned char *t = (const unsigned char *)conn.gate;
    unsigned long at = 0;
    while (!(t[at] == 0x0f && t[at + 1] == 0x01 && t[at + 2] == 0xd4))
        at++;
    unsigned long index = *(const unsigned int *)(t + at - 4);
    char *buf = conn.buf;
    buf[0] = 'a', buf[1] = 'b', buf[2] = 'c', buf[3] = 0;
    long nokey = call_without_key(conn.gate + at, index, 0x1234, ECHO_BUF, 3);
    ub_printf("observed: nokey = %ld buffer = %s\n", nokey, buf);
    long mr[4] = {0, 8, 9, 10}; /* ECHO_REGS: echoed back */
    r = ub_ipc_call(&conn, mr);
    ub_printf("observed: call = %ld mr1 = %ld\n", r, r < 0 ? 0 : mr[1]);
    return 0;
}
