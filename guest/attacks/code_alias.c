/* code_alias: write code after the load-time scan into memory we can write, and run it
 * (PKU Pitfalls: a writable alias of executable frames).
 *
 * usage: code_alias WINDOW
 * The attack: create a PMO, map it writable at argv[1] (in our own window), write
 * `wrpkru; ret` into it (the bytes are assembled at run time, so no scan of our binary
 * could see them) and call it with EAX = ECX = EDX = 0 (all keys open). PMO_MAP knows
 * only READ and WRITE: there is no way to map the same frames executable as well.
 * Expected hardware response: #PF on the instruction fetch at argv[1]: the page is
 * no-execute (every PMO mapping is); the kernel ends us.
 * Checked by: tests/test_redteam.py::test_row[code-alias].
 */
#include "attack.h"
#include "ub_sys.h"

static volatile unsigned char parts[4] = {0x0f, 0x01, 0xee, 0xc3}; /* +1 on the third */

int main(int argc, char **argv)
{
    unsigned long window = attack_arg(argc, argv, 1);
    long pmo = ub_pmo_create(4096);
    long r = pmo < 0 ? pmo : ub_pmo_map(pmo, (void *)window, UB_PROT_READ | UB_PROT_WRITE);
    if (r < 0) {
        ub_printf("code_alias: cannot map a PMO at %p: %ld\n", (void *)window, r);
        return 1;
    }
    volatile unsigned char *code = (volatile unsigned char *)window;
    for (int i = 0; i < 4; i++)
        code[i] = (unsigned char)(parts[i] + (i == 2));
    ub_printf("calling wrpkru; ret written at %p\n", (void *)window);
    __asm__ volatile("call *%0" : : "r"(window), "a"(0L), "c"(0L), "d"(0L)
                     : "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    ub_printf("LEAKED: ran code we wrote after the scan\n");
    return 1;
}
