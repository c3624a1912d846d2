/* mark.c: ycsb_mark() inside underbridge: a zero-length write, which the kernel sees as
 * a syscall and the benchmark's marker recorder notes (bench/markers.py). */
#include "ub.h"

void ycsb_mark(void);

void ycsb_mark(void)
{
    ub_write("", 0);
}
