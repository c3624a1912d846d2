/* hello: the smallest guest program; prints one line and exits with status 0. */
#include "ub.h"

int main(void)
{
    ub_printf("Hello from ring %d of the underbridge machine!\n", 3);
    return 0;
}
