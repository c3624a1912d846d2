/* ub_sys.h: one typed wrapper per syscall that ub.h does not already wrap.
 *
 * Each is a one-line inline function over ub_syscallN, so a call compiles to the bare
 * `syscall` with no extra frame. What each call does, its arguments and its results are
 * documented once, in the generated ub_syscall.h (from abi/syscalls.py); results are
 * a slot or 0 on success, -UB_Exxx on error. The IPC calls live in ub_ipc.h.
 */
#ifndef UB_SYS_H
#define UB_SYS_H

#include "ub.h"

/* ---- process and threads ------------------------------------------------------ */

static inline long ub_yield(void) { return ub_syscall0(UB_SYS_YIELD); }

static inline long ub_spawn_raw(const char *name, unsigned long name_len, const char *args,
                                unsigned long args_len)
{
    return ub_syscall4(UB_SYS_SPAWN, (long)name, (long)name_len, (long)args, (long)args_len);
}

/* Start program `name` with the arguments argv[0..] (a NULL-terminated list, NOT
 * including the program name: the kernel passes `name` as the child's argv[0]). The
 * kernel drops empty arguments. Returns a cap-group slot (READ|GRANT) for ub_wait, or
 * -UB_EINVAL if the arguments do not fit in UB_SPAWN_ARGS_MAX bytes. argv may be NULL.
 * (ublib.c) */
long ub_spawn(const char *name, const char *const argv[]);

static inline long ub_wait(long group_slot, struct ub_exit_info *info)
{
    return ub_syscall2(UB_SYS_WAIT, group_slot, (long)info);
}

static inline long ub_thread_create(void (*entry)(unsigned long), void *stack_top,
                                    unsigned long arg)
{
    return ub_syscall3(UB_SYS_THREAD_CREATE, (long)entry, (long)stack_top, (long)arg);
}

static inline long ub_thread_exit(void) { return ub_syscall0(UB_SYS_THREAD_EXIT); }

/* ---- capabilities ----------------------------------------------------------------- */

static inline long ub_cap_copy(long slot, unsigned long rights_mask)
{
    return ub_syscall2(UB_SYS_CAP_COPY, slot, (long)rights_mask);
}

static inline long ub_cap_grant(long group_slot, long slot, unsigned long rights_mask)
{
    return ub_syscall3(UB_SYS_CAP_GRANT, group_slot, slot, (long)rights_mask);
}

static inline long ub_cap_delete(long slot) { return ub_syscall1(UB_SYS_CAP_DELETE, slot); }

/* (type << 16) | rights, or -errno. */
static inline long ub_cap_info(long slot) { return ub_syscall1(UB_SYS_CAP_INFO, slot); }

/* ---- memory objects -------------------------------------------------------------- */

static inline long ub_pmo_create(unsigned long size)
{
    return ub_syscall1(UB_SYS_PMO_CREATE, (long)size);
}

static inline long ub_pmo_map(long pmo_slot, void *vaddr, unsigned long prot)
{
    return ub_syscall3(UB_SYS_PMO_MAP, pmo_slot, (long)vaddr, (long)prot);
}

static inline long ub_pmo_unmap(void *vaddr) { return ub_syscall1(UB_SYS_PMO_UNMAP, (long)vaddr); }

/* ---- notifications ------------------------------------------------------------------ */

static inline long ub_notif_create(void) { return ub_syscall0(UB_SYS_NOTIF_CREATE); }
static inline long ub_notif_signal(long slot) { return ub_syscall1(UB_SYS_NOTIF_SIGNAL, slot); }
static inline long ub_notif_wait(long slot) { return ub_syscall1(UB_SYS_NOTIF_WAIT, slot); }

#endif
