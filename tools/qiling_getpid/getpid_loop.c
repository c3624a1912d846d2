/* Calls getpid N times through the raw syscall instruction (rax=39),
   so no libc caching can skip the kernel. N from argv[1]. */
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 0;
    long r = 0;
    for (long i = 0; i < n; i++) {
        long ret;
        __asm__ volatile ("syscall" : "=a"(ret) : "a"(39L) : "rcx", "r11", "memory");
        r += ret;
    }
    return (int)(r & 0);
}
