/* hello: the smallest guest program; prints one line and exits with status 0.
 * The ring it reports is read from its own CS selector, not assumed. */
#include "ub.h"

int main(void)
{
    unsigned short cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    ub_printf("Hello from ring %d of the underbridge machine!\n", cs & 3);
    return 0;
}
