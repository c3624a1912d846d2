/* libc_probe: what a musl program gets from the kernel's Linux personality.
 *
 * Exercises start-up (auxv, TLS via arch_prctl), malloc small (brk) and large (mmap,
 * munmap), stdio (writev), the simulated clock, errno from a syscall the personality
 * does not serve, and the exit status. Prints one line per check; exits 0 if all hold.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ub.h"

static int failures;

static void check(int ok, const char *what)
{
    printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    failures += !ok;
}

int main(int argc, char **argv)
{
    check(argc == 2 && strcmp(argv[1], "arg") == 0, "argv");

    char *small = malloc(100);
    strcpy(small, "heap");
    check(strcmp(small, "heap") == 0, "small malloc");

    size_t big_size = 4 << 20;
    unsigned char *big = malloc(big_size);
    check(big != NULL, "large malloc");
    memset(big, 0xA5, big_size);
    check(big[0] == 0xA5 && big[big_size - 1] == 0xA5, "large block writable");
    free(big);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    volatile long spin = 0;
    for (int i = 0; i < 10000; i++)
        spin += i;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    check(t1.tv_sec * 1000000000L + t1.tv_nsec > t0.tv_sec * 1000000000L + t0.tv_nsec,
          "simulated clock advances");

    errno = 0;
    long r = syscall(SYS_getuid);
    check(r == -1 && errno == ENOSYS, "unserved syscall gives ENOSYS");

    check(ub_write("", 0) == 0, "native syscall above the Linux numbers");
    printf("failures=%d\n", failures);
    return failures ? 1 : 7;
}
