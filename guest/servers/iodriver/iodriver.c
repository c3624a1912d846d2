/* iodriver: a minimal device driver, the workload of privilege deprivation's benchmark.
 *
 * usage: iodriver ROUNDS PORT [OUTB INB]
 *
 * Writes ROUNDS bytes to an I/O port with `out dx, al` (through outb() below, as a
 * driver would), between the benchmark's zero-length-write markers (see pingpong.c),
 * then reads the port once with `in al, dx` and prints "iodriver: ROUNDS writes, read
 * 0xNN". In kernel space each I/O instruction is a VM exit that the kernel emulates
 * (the driver holds the port); rewritten (bridge/rewrite/), each becomes a call of
 * the kernel's checked routine (bridge/iocall.py). Same output either way. Given the
 * routines' addresses (OUTB, INB), it calls them itself, exactly as a rewritten binary
 * does, so both paths can be measured on one binary.
 */
#include "ub.h"

static long parse(const char *s)
{
    long v = 0;
    int base = 10;
    if (s[0] == '0' && s[1] == 'x')
        base = 16, s += 2;
    for (; *s; s++)
        v = v * base + (*s >= 'a' ? *s - 'a' + 10 : *s - '0');
    return v;
}

static unsigned long outb_routine, inb_routine; /* 0: execute the instruction */

static __attribute__((noinline)) void outb(unsigned short port, unsigned char value)
{
    if (outb_routine)
        __asm__ volatile("call *%2" ::"a"(value), "d"(port), "r"(outb_routine) : "memory");
    else
        __asm__ volatile("out %0, %1" ::"a"(value), "d"(port));
}

static __attribute__((noinline)) unsigned char inb(unsigned short port)
{
    unsigned char value;
    if (inb_routine)
        __asm__ volatile("call *%2" : "=a"(value) : "d"(port), "r"(inb_routine) : "memory");
    else
        __asm__ volatile("in %1, %0" : "=a"(value) : "d"(port));
    return value;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 5) {
        ub_printf("usage: iodriver ROUNDS PORT [OUTB INB]\n");
        return 2;
    }
    if (argc == 5) {
        outb_routine = (unsigned long)parse(argv[3]);
        inb_routine = (unsigned long)parse(argv[4]);
    }
    long rounds = parse(argv[1]);
    unsigned short port = (unsigned short)parse(argv[2]);
    ub_write("", 0);
    for (long i = 0; i < rounds; i++)
        outb(port, (unsigned char)i);
    ub_write("", 0);
    ub_write("", 0);
    ub_printf("iodriver: %ld writes, read 0x%x\n", rounds, inb(port));
    return 0;
}
