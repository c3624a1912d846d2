"""Syscalls about cap groups and threads: exit, write, yield, spawn, wait, threads."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Limit, Rights
from underbridge.errors import ResourceExhausted, SyscallError, UserError
from underbridge.kernel import umem
from underbridge.kernel.cap import Cap
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.objects.vmspace import USER_END, USER_MIN
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

EXIT_INFO = struct.Struct("<qq")


def read_name(kernel: Kernel, thread: Thread, address: int, length: int) -> str:
    if not 0 < length <= Limit.NAME_MAX:
        raise SyscallError(Errno.EINVAL, f"name length {length}")
    raw = umem.copy_in(
        kernel.machine, thread.group.vmspace.table, address, length, pkru=thread.context.pkru
    )
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as error:
        raise SyscallError(Errno.EINVAL, "names are ASCII") from error


def sys_exit(kernel: Kernel, thread: Thread, status: int, *_: int) -> None:
    kernel.exit(thread.group, status)


def sys_write(kernel: Kernel, thread: Thread, buf: int, length: int, *_: int) -> int:
    data = umem.copy_in(
        kernel.machine, thread.group.vmspace.table, buf, length, pkru=thread.context.pkru
    )
    kernel.console_write(thread.group, data)
    return len(data)


def sys_yield(kernel: Kernel, thread: Thread, *_: int) -> int:
    thread.context[Reg.RAX] = 0  # set now: the thread leaves the CPU before the kernel returns
    kernel.sched.preempt()
    return 0


def sys_spawn(
    kernel: Kernel,
    thread: Thread,
    name_ptr: int,
    name_len: int,
    args_ptr: int,
    args_len: int,
    *_: int,
) -> int:
    name = read_name(kernel, thread, name_ptr, name_len)
    if not 0 <= args_len <= Limit.SPAWN_ARGS_MAX:
        raise SyscallError(Errno.EINVAL, f"argument block of {args_len} bytes")
    raw = umem.copy_in(
        kernel.machine, thread.group.vmspace.table, args_ptr, args_len, pkru=thread.context.pkru
    )
    args = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    if name not in kernel.programs:
        raise SyscallError(Errno.ESRCH, f"no program {name!r}")
    try:
        child = kernel.spawn(name, [name, *args])
    except ResourceExhausted as error:
        raise SyscallError(error.errno, str(error)) from error
    except UserError as error:
        raise SyscallError(Errno.EINVAL, str(error)) from error
    return thread.group.caps.insert(Cap(child, Rights.READ | Rights.GRANT))


def sys_wait(kernel: Kernel, thread: Thread, group_slot: int, info: int, *_: int) -> int | None:
    child = _group_for_wait(thread, group_slot)
    umem.check_writable(thread.group.vmspace.table, info, EXIT_INFO.size, pkru=thread.context.pkru)
    if child.running:
        child.waiters.append((thread, info))
        kernel.sched.block(thread, f"wait for {child.name}")
        return None
    return write_exit_info(kernel, thread, child, info)


def _group_for_wait(thread: Thread, slot: int) -> CapGroup:
    return thread.group.caps.lookup(slot, CapGroup, Rights.READ)


def write_exit_info(kernel: Kernel, thread: Thread, child: CapGroup, info: int) -> int:
    ending = child.ending
    assert ending is not None
    if ending.state is GroupState.FAULTED:
        record = EXIT_INFO.pack(1, ending.fault.vector if ending.fault else -1)
    else:
        record = EXIT_INFO.pack(0, ending.status)
    umem.copy_out(
        kernel.machine, thread.group.vmspace.table, info, record, pkru=thread.context.pkru
    )
    return 0


def sys_thread_create(
    kernel: Kernel, thread: Thread, entry: int, stack_top: int, arg: int, *_: int
) -> int:
    for address in (entry, stack_top):
        if not USER_MIN <= address < USER_END:
            raise SyscallError(Errno.EINVAL, f"{address:#x} is not a user address")
    if stack_top % 16:
        raise SyscallError(Errno.EINVAL, "the stack top must be 16-byte aligned")
    group = thread.group
    new = kernel.add_thread(
        group,
        ring=thread.context.cpl,
        rip=entry,
        rsp=stack_top - 8,
        pkru=thread.context.pkru,
        arg=arg,
    )
    return group.caps.insert(Cap(new, Rights.READ))


def sys_thread_exit(kernel: Kernel, thread: Thread, *_: int) -> None:
    kernel.thread_exit(thread)
