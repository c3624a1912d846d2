/* attack.h: what the red-team attacks in this directory share (src/underbridge/redteam/).
 *
 * Each attack gets its targets as hexadecimal argv words: the red team reads them from
 * the kernel's state and the victims' ELF files, so no address is guessed here. What an
 * attack prints is part of its verdict:
 *   "observed: ..."  an outcome the red team collects (attacks that should survive);
 *   "LEAKED: ..."    an access that should have been stopped was not: the row fails.
 * An attack that should fault prints what it is about to try, then tries it; if it is
 * still running afterwards it prints LEAKED and exits 1.
 */
#ifndef ATTACK_H
#define ATTACK_H

#include "ub.h"

/* argv[i] as a hexadecimal number ("0x" optional); exits 2 if it is missing or bad. */
static inline unsigned long attack_arg(int argc, char **argv, int i)
{
    const char *s = i < argc ? argv[i] : "";
    unsigned long v = 0;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (*s == '\0') {
        ub_printf("usage: %s HEX...: argument %d is missing or empty\n", argv[0], i);
        ub_exit(2);
    }
    for (; *s; s++) {
        int d = *s >= '0' && *s <= '9'   ? *s - '0'
                : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
                : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10
                                         : -1;
        if (d < 0 || v >> 60) {
            ub_printf("%s: argument %d is not a hexadecimal address\n", argv[0], i);
            ub_exit(2);
        }
        v = v * 16 + (unsigned long)d;
    }
    return v;
}

/* Read 8 bytes at `address`, which the caller must not be able to read. */
static inline int attack_read(unsigned long address, const char *what)
{
    ub_printf("reading 8 bytes of %s at %p\n", what, (void *)address);
    unsigned long value = *(volatile unsigned long *)address;
    ub_printf("LEAKED: %s at %p holds %lx\n", what, (void *)address, value);
    return 1;
}

/* Write `value` to the 8 bytes at `address`, which the caller must not be able to write. */
static inline int attack_write(unsigned long address, unsigned long value, const char *what)
{
    ub_printf("writing %lx to %s at %p\n", value, what, (void *)address);
    *(volatile unsigned long *)address = value;
    ub_printf("LEAKED: wrote %lx to %s at %p\n", value, what, (void *)address);
    return 1;
}

/* ---- rows with a partner (a second in-kernel program: the victim) ------------------
 * They find each other by service name. A victim prints what it observed as
 * "victim: ..." lines; the red team compares them with the row's expected ones. */
#define ATTACK_SERVICE "attacker" /* the attacker's own service, when it is a server */
#define VICTIM_SERVICE "victim"   /* the victim's, when it is a server */

/* The calls of victim_client's "buffer" mode to the unmap_buffer attacker (mr[0]). */
#define OP_HELLO 1 /* the server notes the shared buffer's address */
#define OP_POLL 2  /* reply mr[0] = 1 once the server has tried to unmap it, else 0 */
#define OP_CHECK 3 /* reply mr[0] = 1 if the buffer starts with "ok", else 0 */
#define OP_BYE 4   /* the client is done */

/* A stack for a program's second thread (ub_thread_create wants its 16-byte aligned top). */
#define ATTACK_STACK_SIZE 16384
#define ATTACK_STACK(name) static char name[ATTACK_STACK_SIZE] __attribute__((aligned(16)))

#endif
