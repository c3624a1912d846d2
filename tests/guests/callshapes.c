/* callshapes: calls of known shapes for the profiler's call-stack tracking
 * (tests/bench/test_profile.py): recursion, a tail call, a call through a pointer.
 * noipa keeps gcc from merging or specialising the functions (their names stay). */
#include "ub.h"

static volatile int sink;

__attribute__((noinline, noipa)) static void leaf(int n)
{
    for (int i = 0; i < n; i++)
        sink += i;
}

/* Recursion: `depth` frames of recurse, then leaf. */
__attribute__((noinline, noipa)) static void recurse(int depth)
{
    if (depth == 0) {
        leaf(100);
        return;
    }
    recurse(depth - 1);
    sink += depth; /* not a tail call: work after the return */
}

__attribute__((noinline, noipa)) static void tail_target(int n)
{
    leaf(n);
    sink -= n;
}

/* A sibling call: gcc -O2 ends it with `jmp tail_target`. */
__attribute__((noinline, noipa)) static void tail_caller(int n)
{
    sink += 1;
    tail_target(n * 2);
}

__attribute__((noinline, noipa)) static void by_pointer(int n)
{
    leaf(n);
    sink += n;
}

void (*volatile pointer)(int) = by_pointer;

int main(void)
{
    recurse(5);
    tail_caller(50);
    pointer(30);
    return 0;
}
