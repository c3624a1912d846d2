/* pku_neighbor: one of the two ring-0 guests of `underbridge demo pku`.
 *
 * The attack: reach into the other guest's memory, which shares this guest's page
 * table and privilege level (ring 0) and is fenced off only by its protection key.
 * Expected hardware response: reading and writing `secret` (this guest's own key)
 * succeeds; the read of the neighbour's secret raises #PF with the PK bit set
 * (PKRU.AD for the neighbour's key), and the kernel terminates this guest.
 * Checked by: tests/test_demo.py and `underbridge demo pku`.
 *
 * argv: name, role, own value, neighbour's secret address (hex). Role "hold" keeps
 * the guest alive, spinning on its own secret (the victim); role "attack" goes on to
 * read the neighbour's secret.
 */
#include "ub.h"

volatile unsigned long secret = 1;

static unsigned long parse_number(const char *s)
{
    unsigned long value = 0;
    int base = 10;
    if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        s += 2;
    }
    for (; *s; s++) {
        int digit = *s >= 'a' ? *s - 'a' + 10 : *s - '0';
        value = value * base + digit;
    }
    return value;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        ub_printf("usage: pku_neighbor NAME hold|attack VALUE NEIGHBOUR_SECRET_ADDRESS\n");
        return 2;
    }
    const char *name = argv[1];
    unsigned long value = parse_number(argv[3]);
    secret = value;
    ub_printf("%s: wrote my secret %lu at %p and read it back: %lu\n",
              name, value, (void *)&secret, secret);
    if (argv[2][0] == 'h') {
        while (secret == value)
            ;  /* the victim stays alive, touching only its own memory */
        return 3;
    }
    volatile unsigned long *neighbour = (volatile unsigned long *)parse_number(argv[4]);
    ub_printf("%s: now reading my neighbour's secret at %p ...\n", name, (void *)neighbour);
    unsigned long stolen = *neighbour;
    ub_printf("%s: stole %lu -- isolation is broken!\n", name, stolen);
    return 1;
}
