/* fuzz_syscalls: issues random syscalls with random arguments, for `underbridge fuzz`.
 *
 * usage: fuzz_syscalls SEED COUNT [REGION [linux]]
 *   SEED    hex, the start of a splitmix64 stream: a run is reproducible from it alone
 *   COUNT   decimal, how many syscalls the main thread issues (workers issue COUNT/4)
 *   REGION  hex, a page-aligned window the program may try to map memory objects in
 *           (an in-kernel program: the upper part of its own region's lower half)
 *   linux   the program was spawned with the Linux personality: Linux numbers are
 *           drawn too, and native calls are made at UB_LINUX_NATIVE_BASE + n
 *
 * Each syscall's number is drawn mostly from the native table (0..UB_SYS_PORT_IO),
 * sometimes invalid (past the table, huge, negative) and, under linux, from the Linux
 * range. Each argument is drawn from a class: small integers, capability slots seen in
 * earlier results, wild 64-bit values, kernel-half and non-canonical addresses,
 * pointers into this program's code, read-only data, writable data and stack, unmapped
 * user addresses, the gate/control/save windows of in-kernel IPC, the IPC buffer
 * window, sizes at interesting boundaries. Half of the calls get arguments shaped for
 * their syscall instead (a real service name, a mapping window, a worker thread), so
 * that real objects come to exist and the later random calls have something to hit.
 *
 * What the kernel must do: return -errno, or do the operation, and never crash. The
 * program avoids only what would end a run trivially: EXIT and THREAD_EXIT (and Linux
 * exit/exit_group) are re-drawn unless a 1-in-256 draw allows them.
 * Expected outcome: `underbridge fuzz` counts its results; src/underbridge/fuzz/.
 */
#include "ub.h"

#define LINUX_NATIVE_BASE 0x1000
#define NATIVE_COUNT (UB_SYS_PORT_IO + 1)
#define POOL 16
#define WORKER_STACKS 6
#define WORKER_STACK_BYTES 16384
#define PAGE 4096UL

/* Addresses the kernel's layout gives meaning to (kernel/ipc/underbridge.py,
 * kernel/handlers/ipc.py, machine/boot.py). */
#define GATE_WINDOW 0x60000000UL
#define CONTROL_WINDOW 0x70000000UL
#define KERNEL_SAVE_WINDOW 0x78000000UL
#define IO_ROUTINES_PAGE 0x7F000000UL
#define KERNEL_CALL_STACK 0x630000000000UL
#define KERNEL_RETURN 0x630000010800UL
#define IPC_WINDOW 0x500000000000UL
#define IPC_SLOT_SPACING 0x10000UL
#define KERNEL_TEXT 0xFFFFFFFF80000000UL
#define KERNEL_DATA 0xFFFFFFFF80100000UL
#define USER_END (1UL << 47)

static const char *const names[] = {"echo", "fuzz_syscalls", "hello", "fuzzsvc0", "fuzzsvc1",
                                    "fuzzsvc2", "nosuchprogram", "", "e"};
#define NAME_COUNT (sizeof(names) / sizeof(names[0]))
static const char child_args[] = "0123456789abcdef\0" "20\0";

static unsigned char data_area[2 * PAGE] __attribute__((aligned(4096)));
static unsigned char worker_stacks[WORKER_STACKS][WORKER_STACK_BYTES] __attribute__((aligned(16)));
static int workers_started;
static unsigned long region;      /* REGION from argv, or 0 */
static long native_base;          /* 0, or LINUX_NATIVE_BASE under the Linux personality */
static int linux_mode;
static long slots[POOL];          /* non-negative results of cap-returning calls */
static unsigned long buffers[POOL]; /* IPC buffers and PMO addresses seen */
static unsigned long gates[POOL]; /* gates IPC_CONNECT handed out (in-kernel only) */
static long main_count;

/* ---- the random stream ---------------------------------------------------------- */

struct rng {
    unsigned long state;
};

static unsigned long next(struct rng *r)
{
    unsigned long z = (r->state += 0x9E3779B97F4A7C15UL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    return z ^ (z >> 31);
}

static unsigned long below(struct rng *r, unsigned long n)
{
    return n ? next(r) % n : 0;
}

static void remember(unsigned long *pool, struct rng *r, unsigned long value)
{
    pool[below(r, POOL)] = value;
}

/* ---- one raw syscall, every argument register in and out ----------------------- */

struct result {
    long rax, rdi, rsi, rdx;
};

static struct result raw_syscall(long n, const unsigned long a[6])
{
    register unsigned long r10 __asm__("r10") = a[3];
    register unsigned long r8 __asm__("r8") = a[4];
    register unsigned long r9 __asm__("r9") = a[5];
    unsigned long rdi = a[0], rsi = a[1], rdx = a[2];
    long rax = n;
    /* The kernel may return values in any argument register (IPC_CONNECT,
     * IPC_REPLY_WAIT): all of them are outputs. */
    __asm__ volatile("syscall"
                     : "+a"(rax), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8),
                       "+r"(r9)
                     :
                     : "rcx", "r11", "memory");
    struct result out = {rax, (long)rdi, (long)rsi, (long)rdx};
    return out;
}

static void exit_now(long status)
{
    unsigned long a[6] = {(unsigned long)status, 0, 0, 0, 0, 0};
    raw_syscall(linux_mode ? 231 : UB_SYS_EXIT, a); /* exit_group under Linux */
    for (;;)
        __asm__ volatile("ud2");
}

/* ---- argument classes ------------------------------------------------------------- */

static void handler(void *msg);

static unsigned long pick_pool(struct rng *r, const unsigned long *pool)
{
    return pool[below(r, POOL)];
}

static unsigned long size_class(struct rng *r)
{
    static const unsigned long sizes[] = {0, 1, 8, 4095, 4096, 4097, 16384, 1UL << 20,
                                          (1UL << 20) + 1, 16UL << 20, (16UL << 20) + 1,
                                          1UL << 32, 0x7FFFFFFFFFFFFFFFUL, ~0UL, ~0UL - 4095};
    if (below(r, 2))
        return sizes[below(r, sizeof(sizes) / sizeof(sizes[0]))];
    return below(r, 1UL << below(r, 40));
}

static unsigned long arg_class(struct rng *r)
{
    unsigned long local = 0;
    switch (below(r, 17)) {
    case 0:
        return below(r, 8);
    case 1:
        return (unsigned long)slots[below(r, POOL)] + below(r, 2);
    case 2:
        return next(r);
    case 3: /* kernel half, sometimes exactly the kernel's own pages */
        if (below(r, 2))
            return (below(r, 2) ? KERNEL_DATA : KERNEL_TEXT) + below(r, 4) * PAGE;
        return 0xFFFF800000000000UL | next(r);
    case 4: /* non-canonical */
        return below(r, 2) ? ((next(r) & 0x00007FFFFFFFFFFFUL) | 0x0000800000000000UL)
                           : (0x8000000000000000UL | below(r, 1UL << 47));
    case 5: /* this program's code */
        return (unsigned long)&handler + below(r, 2 * PAGE) - PAGE;
    case 6: /* read-only data */
        return (unsigned long)names[below(r, NAME_COUNT)] + below(r, 4);
    case 7: /* writable data, sometimes page aligned */
        return (unsigned long)data_area + (below(r, 2) ? below(r, 2) * PAGE : below(r, 2 * PAGE));
    case 8: /* this thread's stack */
        return (unsigned long)&local - below(r, 512);
    case 9: /* an unmapped user address, sometimes page aligned */
        return (0x10000 + below(r, USER_END - 0x10000)) & (below(r, 2) ? ~(PAGE - 1) : ~0UL);
    case 10: /* where in-kernel IPC keeps gates, tokens and save areas */
        switch (below(r, 6)) {
        case 0: return GATE_WINDOW + below(r, 32) * PAGE + below(r, 64);
        case 1: return CONTROL_WINDOW + below(r, 32) * PAGE + 8 * below(r, 2);
        case 2: return KERNEL_SAVE_WINDOW + below(r, 32) * PAGE;
        case 3: return IO_ROUTINES_PAGE + below(r, 64);
        case 4: return below(r, 2) ? KERNEL_CALL_STACK + below(r, PAGE) : KERNEL_RETURN;
        default: return pick_pool(r, gates);
        }
    case 11: /* the IPC buffer window */
        return below(r, 2) ? pick_pool(r, buffers)
                           : IPC_WINDOW + below(r, 64) * IPC_SLOT_SPACING + below(r, 2) * PAGE;
    case 12: /* the mapping window */
        return (region ? region : 0x20000000UL) + below(r, 1024) * PAGE;
    case 13:
        return size_class(r);
    case 14:
        return (unsigned long)-(long)below(r, 130);
    case 15: /* rights masks and protections */
        return below(r, 2) ? below(r, 128) : below(r, 4);
    default: /* the top of a region, a page boundary, an address just past a window */
        return (below(r, 2) ? 0x1000000UL : 0x100000000UL) * below(r, 128) - below(r, 2) * 8;
    }
}

/* ---- arguments shaped for a syscall --------------------------------------------- */

static void name_args(struct rng *r, unsigned long *ptr, unsigned long *len)
{
    const char *name = names[below(r, NAME_COUNT)];
    *ptr = (unsigned long)name;
    *len = strlen(name) + (below(r, 8) == 0); /* sometimes the NUL too */
}

static void worker(unsigned long seed);

static void shape(struct rng *r, long n, unsigned long a[6])
{
    switch (n) {
    case UB_SYS_WRITE:
        a[0] = (unsigned long)data_area + below(r, PAGE);
        a[1] = below(r, 64);
        break;
    case UB_SYS_SPAWN:
        name_args(r, &a[0], &a[1]);
        a[2] = (unsigned long)child_args;
        a[3] = below(r, sizeof(child_args) + 1);
        break;
    case UB_SYS_WAIT:
        a[1] = (unsigned long)data_area + 8 * below(r, 16);
        break;
    case UB_SYS_CAP_GRANT:
        a[2] = below(r, 128);
        break;
    case UB_SYS_PMO_CREATE: /* small ones to map, large ones to run memory out */
        a[0] = below(r, 4) ? PAGE * (1 + below(r, 8)) : 1 + below(r, 16UL << 20);
        break;
    case UB_SYS_PMO_MAP:
        a[1] = (region ? region : 0x20000000UL) + below(r, 64) * PAGE;
        a[2] = 1 + below(r, 3);
        remember(buffers, r, a[1]);
        break;
    case UB_SYS_PMO_UNMAP:
        a[0] = pick_pool(r, buffers);
        break;
    case UB_SYS_THREAD_CREATE:
        if (workers_started < WORKER_STACKS) {
            a[0] = (unsigned long)&worker;
            a[1] = (unsigned long)worker_stacks[workers_started] + WORKER_STACK_BYTES;
            a[2] = next(r);
            workers_started++;
        } else {
            a[0] = KERNEL_TEXT; /* no stack left for a worker: a refused entry */
        }
        break;
    case UB_SYS_IPC_REGISTER:
        name_args(r, &a[0], &a[1]);
        a[2] = below(r, 4) ? (unsigned long)&handler : arg_class(r);
        break;
    case UB_SYS_IPC_CONNECT: /* echo often: every in-kernel connection takes a key */
        name_args(r, &a[0], &a[1]);
        if (below(r, 2)) {
            a[0] = (unsigned long)names[0];
            a[1] = strlen(names[0]);
        }
        break;
    default:
        break;
    }
}

/* ---- drawing a syscall number ---------------------------------------------------- */

static int is_exit(long n)
{
    return n == native_base + UB_SYS_EXIT || n == native_base + UB_SYS_THREAD_EXIT ||
           (linux_mode && (n == 60 || n == 231));
}

static long linux_number(struct rng *r)
{
    static const long served[] = {1, 9, 11, 12, 16, 20, 39, 60, 158, 186, 218, 228, 231};
    if (below(r, 4))
        return served[below(r, sizeof(served) / sizeof(served[0]))];
    return (long)below(r, 450);
}

static long draw_number(struct rng *r)
{
    for (;;) {
        long n;
        unsigned long roll = below(r, 100);
        if (linux_mode && roll < 35)
            n = linux_number(r);
        else if (roll < 92)
            n = native_base + (long)below(r, NATIVE_COUNT);
        else if (roll < 96)
            n = native_base + NATIVE_COUNT + (long)below(r, 64);
        else
            n = below(r, 2) ? (long)next(r) : -(long)below(r, 4096);
        if (!is_exit(n) || below(r, 256) == 0)
            return n;
    }
}

/* ---- the fuzz loop ------------------------------------------------------------------ */

/* A gate's convention (bridge/gate.py): mr in RSI, RDI, R8, R9 both ways. */
static long call_gate(unsigned long gate, struct rng *r)
{
    register unsigned long rsi __asm__("rsi") = below(r, 3);
    register unsigned long rdi __asm__("rdi") = next(r);
    register unsigned long r8 __asm__("r8") = next(r);
    register unsigned long r9 __asm__("r9") = next(r);
    long ret;
    __asm__ volatile("call *%[gate]"
                     : "=a"(ret), "+r"(rsi), "+r"(rdi), "+r"(r8), "+r"(r9)
                     : [gate] "r"(gate)
                     : "rcx", "rdx", "r10", "r11", "memory", "cc");
    return ret;
}

static void note(struct rng *r, long n, struct result res)
{
    long native = n - native_base;
    if (res.rax < 0)
        return;
    switch (native) {
    case UB_SYS_SPAWN: case UB_SYS_CAP_COPY: case UB_SYS_PMO_CREATE: case UB_SYS_THREAD_CREATE:
    case UB_SYS_NOTIF_CREATE: case UB_SYS_IPC_REGISTER:
        slots[below(r, POOL)] = res.rax;
        break;
    case UB_SYS_IPC_CONNECT:
        slots[below(r, POOL)] = res.rax;
        remember(buffers, r, (unsigned long)res.rdi);
        if (res.rdx)
            remember(gates, r, (unsigned long)res.rdx);
        break;
    default:
        break;
    }
}

static void fuzz(unsigned long seed, long count)
{
    struct rng r = {seed};
    for (long i = 0; i < count; i++) {
        long n = draw_number(&r);
        unsigned long a[6];
        for (int k = 0; k < 6; k++) /* page aligned 1 in 8: what mapping calls check first */
            a[k] = arg_class(&r) & (below(&r, 8) ? ~0UL : ~(PAGE - 1));
        int shaped = below(&r, 2);
        /* A thread at a wild entry ends the whole program: only 1 in 8 of those. */
        if (n - native_base == UB_SYS_THREAD_CREATE && below(&r, 8))
            shaped = 1;
        if (shaped)
            shape(&r, n - native_base, a);
        if (n - native_base == UB_SYS_IPC_CALL && below(&r, 2)) {
            unsigned long gate = pick_pool(&r, gates);
            if (gate) { /* an in-kernel client calls its gate itself */
                call_gate(gate, &r);
                continue;
            }
        }
        note(&r, n, raw_syscall(n, a));
    }
}

/* The handler of this program's own services. Entered through a gate (in-kernel) it
 * runs on the caller's thread in this domain, where a syscall must get -EDEADLK; so it
 * makes one, half of the time. */
static void handler(void *msg)
{
    static struct rng r = {0x5eed};
    long *mr = (long *)msg + 2;
    mr[0] = mr[0] * 3 + 1; /* any reply will do */
    if (below(&r, 2)) {
        unsigned long a[6] = {next(&r), next(&r), next(&r), next(&r), next(&r), next(&r)};
        raw_syscall(draw_number(&r), a);
    }
}

static void worker(unsigned long seed)
{
    fuzz(seed, main_count / 4);
    unsigned long a[6] = {0};
    raw_syscall(native_base + UB_SYS_THREAD_EXIT, a);
    for (;;)
        __asm__ volatile("ud2");
}

static unsigned long parse_hex(const char *s)
{
    unsigned long v = 0;
    for (; *s; s++) {
        char c = *s;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            break;
        v = v * 16 + (unsigned long)d;
    }
    return v;
}

int main(int argc, char **argv)
{
    unsigned long seed = argc > 1 ? parse_hex(argv[1]) : 1;
    long count = argc > 2 ? ub_parse_count(argv[2]) : 100;
    region = argc > 3 ? parse_hex(argv[3]) & ~(PAGE - 1) : 0;
    linux_mode = argc > 4 && ub_streq(argv[4], "linux");
    native_base = linux_mode ? LINUX_NATIVE_BASE : 0;
    main_count = count < 0 ? 100 : count;
    for (int i = 0; i < POOL; i++)
        slots[i] = i;
    fuzz(seed, main_count);
    exit_now(0);
}
