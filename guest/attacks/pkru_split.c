/* pkru_split: a wrpkru split across a page boundary, so that neither page holds it.
 *
 * The attack (PKU Pitfalls, Connor et al., USENIX Security 2020): the bytes 0f 01 are
 * the last two of one executable page and ef the first of the next, so a scanner that
 * vetted code page by page (or segment by segment) would pass both pages. argv[1]
 * picks the variant: "plain" (after int3 filler, so a linear disassembly decodes the
 * split bytes as a wrpkru) or "hidden" (they are the immediate of a
 * `mov eax, 0xef010f90` that straddles the boundary). The attacker calls the 0f with
 * EAX = ECX = EDX = 0: the wrpkru would open every protection key, then `ret`.
 * Expected response: the kernel refuses to place the binary in kernel space: the
 * scanner searches each run of adjacent executable pages as one, and finds a wrpkru at
 * the boundary, aligned (plain) or hidden inside the mov (hidden). (The binary holds
 * both splits, so both rows show the same refusal.)
 * Checked by: tests/bridge/test_scan.py::test_a_wrpkru_split_across_pages_is_refused
 * and tests/test_redteam.py::test_row[pkru-split-plain] and [pkru-split-hidden].
 */
#include "attack.h"

extern char split_plain[], split_hidden[];

/* Three pages: P ends 0f 01 | P+1 starts ef c3 and ends b8 90 0f 01 | P+2 starts ef c3.
 * split_plain and split_hidden are the two 0f bytes. */
__asm__(".pushsection .text\n"
        ".p2align 12\n"
        ".fill 4094, 1, 0xcc\n"
        "split_plain:\n"
        ".byte 0x0f, 0x01\n"
        ".byte 0xef, 0xc3\n"
        ".fill 4096 - 2 - 4, 1, 0xcc\n"
        ".byte 0xb8, 0x90\n"
        "split_hidden:\n"
        ".byte 0x0f, 0x01\n"
        ".byte 0xef, 0xc3\n"
        ".popsection\n");

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    void (*split)(void) = ub_streq(argv[1], "hidden") ? (void (*)(void))split_hidden
                                                      : (void (*)(void))split_plain;
    ub_printf("attempting a wrpkru split across a page boundary (%s) at %p\n", argv[1],
              (void *)split);
    __asm__ volatile("call *%0" ::"r"(split), "a"(0), "c"(0), "d"(0) : "memory");
    ub_printf("broken: PKRU rewritten\n");
    return 1;
}
