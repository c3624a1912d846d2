"""IPC syscalls: register a service, connect to one, call, reply-and-wait.

These handlers check capabilities and arguments; the active IPC design (kernel.ipc)
carries the checked message and charges what its path costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Limit, Rights
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.kernel.cap import Cap
from underbridge.kernel.handlers.process import read_name
from underbridge.kernel.objects.connection import Connection, Service
from underbridge.kernel.objects.pmo import Pmo
from underbridge.kernel.objects.thread import Thread
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

# Every connection's buffer gets its own system-wide address, the same in client and
# server, so a server can be moved between address spaces without remapping it.
IPC_WINDOW = 0x5000_0000_0000
IPC_SLOT_SPACING = 64 * 1024


def sys_ipc_register(
    kernel: Kernel, thread: Thread, name_ptr: int, name_len: int, handler: int, *_: int
) -> int:
    name = read_name(kernel, thread, name_ptr, name_len)
    if name in kernel.services:
        raise SyscallError(Errno.EEXIST, f"service {name!r} exists")
    holder = kernel.supervisor.holder(name) if kernel.supervisor is not None else None
    if holder is not None and holder is not thread.group:
        raise SyscallError(Errno.EPERM, f"service {name!r} is held for a supervised server")
    service = Service(name, thread.group, handler)
    kernel.services[name] = service
    thread.group.owned.append(service)
    return thread.group.caps.insert(Cap(service, Rights.RECV))


def sys_ipc_connect(kernel: Kernel, thread: Thread, name_ptr: int, name_len: int, *_: int) -> int:
    name = read_name(kernel, thread, name_ptr, name_len)
    service = kernel.services.get(name)
    if service is None or not service.alive:
        raise SyscallError(Errno.ESRCH, f"no service {name!r}")
    badge = kernel.new_badge()
    vaddr = IPC_WINDOW + badge * IPC_SLOT_SPACING
    try:
        buffer = Pmo(kernel.machine.frames, Limit.IPC_BUFFER_SIZE)
    except OutOfMemory as error:
        raise SyscallError(Errno.ENOMEM, str(error)) from error
    client = thread.group
    conn = Connection(service, client, badge, buffer, vaddr)
    try:
        gate = kernel.ipc.connect(kernel, conn)
    except BaseException:
        buffer.destroy()
        raise
    service.connections.append(conn)
    client.owned.append(conn)
    slot = client.caps.insert(Cap(conn, Rights.CALL))
    thread.context[Reg.RDI] = vaddr
    thread.context[Reg.RSI] = Limit.IPC_BUFFER_SIZE
    thread.context[Reg.RDX] = gate
    return slot


def sys_ipc_call(
    kernel: Kernel, thread: Thread, conn_slot: int, mr0: int, mr1: int, mr2: int, mr3: int, *_: int
) -> None:
    conn = thread.group.caps.lookup(conn_slot, Connection, Rights.CALL)
    if not conn.service.alive:
        raise SyscallError(Errno.EPIPE, f"service {conn.service.name!r} is gone")
    kernel.ipc.call(kernel, thread, conn, (mr0, mr1, mr2, mr3))


def sys_ipc_reply_wait(
    kernel: Kernel,
    thread: Thread,
    service_slot: int,
    mr0: int,
    mr1: int,
    mr2: int,
    mr3: int,
    *_: int,
) -> None:
    service = thread.group.caps.lookup(service_slot, Service, Rights.RECV)
    kernel.ipc.reply_wait(kernel, thread, service, (mr0, mr1, mr2, mr3))
