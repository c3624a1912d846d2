"""Syscall dispatch: the handler of every number in syscalls.SYSCALLS, in one table.

Decode, then invoke: `dispatch` turns an unknown number into -ENOSYS and a
SyscallError raised by a handler into -errno; handlers validate every argument
(pointers through umem) before acting. No other exception may escape a handler; one
that does is a kernel bug and stops the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from underbridge.errors import KernelBug, SyscallError
from underbridge.kernel import umem
from underbridge.kernel.syscalls import SYSCALLS, Errno, Sys

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.process import Process

Handler = Callable[["Kernel", "Process", int, int, int, int, int, int], int]


def sys_exit(kernel: Kernel, process: Process, status: int, *_: int) -> int:
    kernel.exit(process, status)
    return 0


def sys_write(kernel: Kernel, process: Process, buf: int, length: int, *_: int) -> int:
    data = umem.copy_in(kernel.machine, process.table, buf, length)
    kernel.console_write(process, data)
    return len(data)


HANDLERS: dict[Sys, Handler] = {
    Sys.EXIT: sys_exit,
    Sys.WRITE: sys_write,
}

if set(HANDLERS) != {spec.number for spec in SYSCALLS}:
    raise KernelBug("syscalls.SYSCALLS and dispatch.HANDLERS disagree")


def dispatch(kernel: Kernel, process: Process, number: int, args: tuple[int, ...]) -> int:
    """Run syscall `number` for `process`; the value to return in RAX."""
    try:
        handler = HANDLERS[Sys(number)]
    except ValueError:
        return -Errno.ENOSYS
    try:
        return handler(kernel, process, *args)
    except SyscallError as error:
        return -error.errno
