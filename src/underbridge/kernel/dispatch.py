"""Syscall dispatch: the handler of every number in syscalls.SYSCALLS, in one table.

Decode, then invoke: `dispatch` turns an unknown number into -ENOSYS and a
SyscallError raised by a handler into -errno. No other exception may escape a
handler; one that does is a kernel bug and stops the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import SYSCALLS, Errno, Sys
from underbridge.errors import KernelBug, SyscallError
from underbridge.kernel.handlers import caps, channel, ipc, memory, notif, portio, process

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

Handler = Callable[..., "int | None"]

HANDLERS: dict[Sys, Handler] = {
    Sys.EXIT: process.sys_exit,
    Sys.WRITE: process.sys_write,
    Sys.YIELD: process.sys_yield,
    Sys.SPAWN: process.sys_spawn,
    Sys.WAIT: process.sys_wait,
    Sys.CAP_COPY: caps.sys_cap_copy,
    Sys.CAP_GRANT: caps.sys_cap_grant,
    Sys.CAP_DELETE: caps.sys_cap_delete,
    Sys.CAP_INFO: caps.sys_cap_info,
    Sys.PMO_CREATE: memory.sys_pmo_create,
    Sys.PMO_MAP: memory.sys_pmo_map,
    Sys.PMO_UNMAP: memory.sys_pmo_unmap,
    Sys.THREAD_CREATE: process.sys_thread_create,
    Sys.THREAD_EXIT: process.sys_thread_exit,
    Sys.NOTIF_CREATE: notif.sys_notif_create,
    Sys.NOTIF_SIGNAL: notif.sys_notif_signal,
    Sys.NOTIF_WAIT: notif.sys_notif_wait,
    Sys.IPC_REGISTER: ipc.sys_ipc_register,
    Sys.IPC_CONNECT: ipc.sys_ipc_connect,
    Sys.IPC_CALL: ipc.sys_ipc_call,
    Sys.IPC_REPLY_WAIT: ipc.sys_ipc_reply_wait,
    Sys.PORT_IO: portio.sys_port_io,
    Sys.CHANNEL_CREATE: channel.sys_channel_create,
    Sys.CHANNEL_WRITE: channel.sys_channel_write,
    Sys.CHANNEL_READ: channel.sys_channel_read,
    Sys.CHANNEL_CALL: channel.sys_channel_call,
    Sys.OBJECT_WAIT: channel.sys_object_wait,
    Sys.PORT_CREATE: channel.sys_port_create,
    Sys.OBJECT_WAIT_ASYNC: channel.sys_object_wait_async,
    Sys.PORT_WAIT: channel.sys_port_wait,
}

if set(HANDLERS) != {spec.number for spec in SYSCALLS}:
    raise KernelBug("syscalls.SYSCALLS and dispatch.HANDLERS disagree")


def dispatch(kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> int | None:
    """Run syscall `number` for `thread`; the value for RAX, or None if arranged."""
    handler = HANDLERS.get(number)  # type: ignore[call-overload]  # Sys is an IntEnum
    if handler is None:
        return -Errno.ENOSYS
    try:
        return handler(kernel, thread, *args)
    except SyscallError as error:
        return -error.errno


def finish_wait(kernel: Kernel, waiter: Thread, child: CapGroup, info: int) -> None:
    """A cap group someone waited for has ended: complete that WAIT."""
    if not waiter.alive:
        return
    try:
        result = process.write_exit_info(kernel, waiter, child, info)
    except SyscallError as error:
        result = -error.errno
    kernel.wake_with(waiter, result)
