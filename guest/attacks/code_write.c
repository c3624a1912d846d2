/* code_write: rewrite our own code after the load-time scan (PKU Pitfalls: changing
 * code after it was scanned).
 *
 * The attack: write `wrpkru` (0f 01 ef, assembled at run time) over the first bytes of
 * our own function patch_site, then call it with EAX = ECX = EDX = 0 (all keys open).
 * The scanner saw clean code at load; a kernel that left code writable would let us
 * change PKRU after all.
 * Expected hardware response: #PF on the write to patch_site: the page is read-only
 * (code pages are never writable, and CR0.WP makes ring 0 honour that); the kernel
 * ends us.
 * Checked by: tests/test_redteam.py::test_row[code-write].
 */
#include "attack.h"

static volatile unsigned char parts[3] = {0x0f, 0x01, 0xee}; /* +1 on the third */

__attribute__((noinline)) long patch_site(long x)
{
    __asm__ volatile("" : "+r"(x));
    return x + 1;
}

int main(void)
{
    volatile unsigned char *code = (volatile unsigned char *)(unsigned long)patch_site;
    ub_printf("writing wrpkru over patch_site at %p\n", (void *)code);
    for (int i = 0; i < 3; i++)
        code[i] = (unsigned char)(parts[i] + (i == 2));
    __asm__ volatile("call *%0" : : "r"(code), "a"(0L), "c"(0L), "d"(0L)
                     : "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    ub_printf("LEAKED: rewrote and ran our own code after the scan\n");
    return 1;
}
