/* pmo_foreign: map a memory object over pages that are not ours, or unmap them (PKU
 * Pitfalls: retagging another domain's pages, or replacing them, through a kernel call).
 *
 * usage: pmo_foreign ECHO_STACK GATE CONTROL WINDOW
 * The attack: create a one-page PMO and PMO_MAP it, writable, at the page of echo's
 * stack, at another client's gate to echo, at that connection's control page and in
 * the upper half of our own region (where the kernel puts our stacks and the pages of
 * our connections); PMO_UNMAP echo's stack page and the gate. A kernel that maps there
 * would give us a writable alias of echo's memory under our key, or replace a gate with
 * a page we can write. Mapping and unmapping in our own window (argv[4]) come first, to
 * show the channel works.
 * Expected response: none from the hardware; the kernel maps a guest's PMOs only inside
 * its own window (the lower half of its region): -EINVAL (-22) for every foreign page,
 * and PMO_UNMAP finds no PMO of ours there (-EINVAL). We report each as "observed:".
 * Checked by: tests/test_redteam.py::test_row[pmo-foreign].
 */
#include "attack.h"
#include "ub_sys.h"

#define PAGE 4096UL
#define REGION (16UL << 20)

static void check(const char *what, long r, int foreign)
{
    ub_printf("observed: %s = %ld\n", what, r);
    if (r >= 0 && foreign)
        ub_printf("LEAKED: the kernel did %s for us\n", what);
}

int main(int argc, char **argv)
{
    unsigned long echo = attack_arg(argc, argv, 1) & ~(PAGE - 1);
    unsigned long gate = attack_arg(argc, argv, 2);
    unsigned long control = attack_arg(argc, argv, 3);
    unsigned long window = attack_arg(argc, argv, 4);
    unsigned long upper = (window & ~(REGION - 1)) + REGION * 3 / 4;
    long pmo = ub_pmo_create(PAGE);
    if (pmo < 0) {
        ub_printf("pmo_foreign: cannot create a PMO: %ld\n", pmo);
        return 1;
    }
    long prot = UB_PROT_READ | UB_PROT_WRITE;
    check("map(own window)", ub_pmo_map(pmo, (void *)window, prot), 0);
    check("unmap(own window)", ub_pmo_unmap((void *)window), 0);
    check("map(echo's stack)", ub_pmo_map(pmo, (void *)echo, prot), 1);
    check("map(gate)", ub_pmo_map(pmo, (void *)gate, prot), 1);
    check("map(control page)", ub_pmo_map(pmo, (void *)control, prot), 1);
    check("map(own region's upper half)", ub_pmo_map(pmo, (void *)upper, prot), 1);
    check("unmap(echo's stack)", ub_pmo_unmap((void *)echo), 1);
    check("unmap(gate)", ub_pmo_unmap((void *)gate), 1);
    return 0;
}
