"""Syscalls on Zircon-style channels and ports (objects/channel.py holds their state).

CHANNEL_CREATE, CHANNEL_WRITE, CHANNEL_READ, CHANNEL_CALL, OBJECT_WAIT, PORT_CREATE,
OBJECT_WAIT_ASYNC, PORT_WAIT: native syscalls under every IPC design (the zircon design
also maps IPC_CALL and IPC_REPLY_WAIT onto channels, kernel/ipc/zircon.py).

What is checked, and why a guest cannot get around it:
  - every slot through CapTable.lookup with the right the operation needs (WRITE to
    write, READ to read, WAIT to wait, GRANT on each handle a message carries);
  - every pointer through umem, against the caller's own page table and PKRU, and all
    of a write's input (bytes, handle slots, sizes) before anything changes, so a
    failed write leaves the caller's table and the channel as they were;
  - a message cannot carry the endpoint it is written on, nor that endpoint's peer (it
    would sit in its own queue), nor the same slot twice;
  - handles leave the writer's table when the message is queued and enter the reader's
    when it is read: a handle is in one place at a time. An endpoint's owner moves
    with it, so it closes when its holder ends; other objects stay with their creator.
  - a blocked thread is completed by a callback that first checks the thread is still
    alive and blocked, so a thread that died meanwhile is never written to.
Deleting an endpoint's cap closes the endpoint (as closing a handle does in Zircon; a
copy made with CAP_COPY names the same endpoint and is revoked with it).
"""

from __future__ import annotations

import struct
from functools import partial
from typing import TYPE_CHECKING, Any

from underbridge.abi.syscalls import Errno, Limit, Rights, Signal
from underbridge.errors import SyscallError
from underbridge.kernel import umem
from underbridge.kernel.cap import Cap
from underbridge.kernel.objects.channel import (
    PORT_GONE,
    TXID_BYTES,
    ChannelMessage,
    Endpoint,
    Port,
    channel_pair,
)
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

HANDLE_RIGHTS = Rights.READ | Rights.WRITE | Rights.WAIT | Rights.GRANT
CALL_ARGS = struct.Struct("<8Q")  # struct ub_channel_call_args
ALL_SIGNALS = int(Signal.READABLE | Signal.PEER_CLOSED)


def _copy_in(kernel: Kernel, thread: Thread, address: int, length: int) -> bytes:
    table, pkru = thread.group.vmspace.table, thread.context.pkru
    return umem.copy_in(kernel.machine, table, address, length, pkru=pkru)


def _check_sizes(num_bytes: int, num_handles: int) -> None:
    if num_bytes > Limit.CHANNEL_BYTES_MAX or num_handles > Limit.CHANNEL_HANDLES_MAX:
        raise SyscallError(
            Errno.EMSGSIZE,
            f"a message holds at most {int(Limit.CHANNEL_BYTES_MAX)} bytes "
            f"and {int(Limit.CHANNEL_HANDLES_MAX)} handles",
        )


def _adopt(group: CapGroup | None, cap: Cap) -> None:
    """An endpoint belongs to the group holding it (None: in flight)."""
    obj = cap.obj
    if isinstance(obj, Endpoint):
        if obj.owner is not None and obj in obj.owner.owned:
            obj.owner.owned.remove(obj)
        obj.owner = group
        if group is not None:
            group.owned.append(obj)


def new_endpoint_caps(group: CapGroup) -> tuple[int, int]:
    a, b = channel_pair()
    cap_a, cap_b = Cap(a, HANDLE_RIGHTS), Cap(b, HANDLE_RIGHTS)
    slot_a = group.caps.insert(cap_a)
    try:
        slot_b = group.caps.insert(cap_b)
    except SyscallError:
        group.caps.delete(slot_a)
        a.close()
        raise
    _adopt(group, cap_a)
    _adopt(group, cap_b)
    return slot_a, slot_b


def read_message(
    kernel: Kernel, thread: Thread, args: tuple[int, ...], needs: Rights = Rights.WRITE
) -> tuple[Endpoint, ChannelMessage, tuple[int, ...]]:
    """A message from the caller, args (endpoint, bytes, num_bytes, handles, num_handles),
    checked in full: its endpoint, the message, and the slots of its handles, which are
    still in the caller's table."""
    endpoint = thread.group.caps.lookup(args[0], Endpoint, needs)
    _, data_ptr, num_bytes, handles_ptr, num_handles = args[:5]
    _check_sizes(num_bytes, num_handles)
    data = _copy_in(kernel, thread, data_ptr, num_bytes)
    raw = _copy_in(kernel, thread, handles_ptr, 8 * num_handles)
    slots = struct.unpack(f"<{num_handles}q", raw)
    if len(set(slots)) != len(slots):
        raise SyscallError(Errno.EINVAL, "a handle appears twice in one message")
    caps = []
    for slot in slots:
        cap = thread.group.caps.get(slot)
        if not cap.rights & Rights.GRANT:
            raise SyscallError(Errno.EPERM, f"slot {slot} lacks GRANT, so it cannot be sent")
        if cap.obj is endpoint or cap.obj is endpoint.peer:
            raise SyscallError(Errno.EINVAL, f"slot {slot} is this channel's own endpoint")
        caps.append(cap)
    return endpoint, ChannelMessage(data, tuple(caps)), slots


def send(
    thread: Thread, endpoint: Endpoint, message: ChannelMessage, slots: tuple[int, ...]
) -> None:
    """Queue a checked message: its handles leave the caller's table now."""
    if endpoint.peer is None:
        raise SyscallError(Errno.EPIPE, "the channel's other endpoint is closed")
    for slot, cap in zip(slots, message.caps, strict=True):
        thread.group.caps.delete(slot)
        _adopt(None, cap)
    endpoint.write(message)


def deliver_to(
    kernel: Kernel, thread: Thread, message: ChannelMessage, buffers: tuple[int, int, int, int]
) -> int:
    """Copy a message into a thread's buffers (bytes, bytes_cap, handles, handles_cap)
    and give it its handles; the byte count, with RDI = the handle count. Raises (and
    installs nothing) if it does not fit or a buffer is not the thread's to write."""
    data_ptr, bytes_cap, handles_ptr, handles_cap = buffers
    if len(message.data) > bytes_cap or len(message.caps) > handles_cap:
        raise SyscallError(
            Errno.EMSGSIZE,
            f"a message of {len(message.data)} bytes, {len(message.caps)} handles does not fit",
        )
    table, pkru = thread.group.vmspace.table, thread.context.pkru
    umem.check_writable(table, handles_ptr, 8 * len(message.caps), pkru=pkru)
    umem.copy_out(kernel.machine, table, data_ptr, message.data, pkru=pkru)
    slots: list[int] = []
    try:
        for cap in message.caps:
            slots.append(thread.group.caps.insert(cap))
    except SyscallError:
        for slot in slots:
            thread.group.caps.delete(slot)
        raise
    umem.copy_out(
        kernel.machine, table, handles_ptr, struct.pack(f"<{len(slots)}q", *slots), pkru=pkru
    )
    for cap in message.caps:
        _adopt(thread.group, cap)
    message.caps = ()
    thread.context[Reg.RDI] = len(slots)
    return len(message.data)


def _blocked(thread: Thread) -> bool:
    return thread.alive and thread.state is ThreadState.BLOCKED


# -- the syscalls ------------------------------------------------------------------------


def sys_channel_create(kernel: Kernel, thread: Thread, *_: int) -> int:
    slot_a, slot_b = new_endpoint_caps(thread.group)
    thread.context[Reg.RDI] = slot_b
    return slot_a


def sys_channel_write(kernel: Kernel, thread: Thread, *args: int) -> int:
    send(thread, *read_message(kernel, thread, args))
    return 0


def sys_channel_read(
    kernel: Kernel,
    thread: Thread,
    slot: int,
    data: int,
    bytes_cap: int,
    handles: int,
    handles_cap: int,
    *_: int,
) -> int:
    endpoint = thread.group.caps.lookup(slot, Endpoint, Rights.READ)
    if not endpoint.queue:
        if endpoint.peer is None:
            raise SyscallError(Errno.EPIPE, "empty, and the other endpoint is closed")
        raise SyscallError(Errno.EAGAIN, "no message yet")
    count = deliver_to(kernel, thread, endpoint.queue[0], (data, bytes_cap, handles, handles_cap))
    endpoint.queue.popleft()
    return count


def sys_channel_call(kernel: Kernel, thread: Thread, slot: int, args_ptr: int, *_: int) -> None:
    wr_bytes, wr_handles, wr_n, wr_h, rd_bytes, rd_handles, rd_n, rd_h = CALL_ARGS.unpack(
        _copy_in(kernel, thread, args_ptr, CALL_ARGS.size)
    )
    if wr_n < TXID_BYTES:
        raise SyscallError(Errno.EINVAL, "a call's message starts with its 4-byte txid")
    endpoint, message, slots = read_message(
        kernel, thread, (slot, wr_bytes, wr_n, wr_handles, wr_h), Rights.WRITE | Rights.READ
    )
    table, pkru = thread.group.vmspace.table, thread.context.pkru
    umem.check_writable(table, rd_bytes, min(rd_n, Limit.CHANNEL_BYTES_MAX), pkru=pkru)
    txid = endpoint.new_txid()
    message.data = txid.to_bytes(TXID_BYTES, "little") + message.data[TXID_BYTES:]
    endpoint.calls[txid] = partial(_call_done, kernel, thread, (rd_bytes, rd_n, rd_handles, rd_h))
    try:
        send(thread, endpoint, message, slots)
    except SyscallError:
        del endpoint.calls[txid]
        raise
    if thread.state is ThreadState.RUNNING and txid in endpoint.calls:  # no reply yet
        kernel.sched.block(thread, f"channel call (slot {slot})")


def _call_done(
    kernel: Kernel, thread: Thread, buffers: tuple[int, int, int, int], reply: ChannelMessage | None
) -> None:
    if not thread.alive:
        if reply is not None:
            reply.discard()
        return
    try:
        if reply is None:
            raise SyscallError(Errno.EPIPE, "the channel closed before the reply")
        result = deliver_to(kernel, thread, reply, buffers)
    except SyscallError as error:
        if reply is not None:
            reply.discard()
        result = -error.errno
    thread.context[Reg.RAX] = result & 0xFFFF_FFFF_FFFF_FFFF
    if thread.state is ThreadState.BLOCKED:
        kernel.sched.wake(thread)


def sys_object_wait(kernel: Kernel, thread: Thread, slot: int, signals: int, *_: int) -> int | None:
    endpoint = thread.group.caps.lookup(slot, Endpoint, Rights.WAIT)
    if not signals & ALL_SIGNALS or signals & ~ALL_SIGNALS:
        raise SyscallError(Errno.EINVAL, f"signals {signals:#x}")
    if endpoint.signals() & signals:
        return endpoint.signals()
    endpoint.observers.append(partial(_wait_done, kernel, thread, signals))
    kernel.sched.block(thread, f"wait on channel (slot {slot})")
    return None


def _wait_done(kernel: Kernel, thread: Thread, wanted: int, _: Endpoint, signals: int) -> bool:
    """Keep waiting (True) until one of the wanted signals is asserted."""
    if not _blocked(thread):
        return False
    if not signals & wanted:
        return True
    kernel.wake_with(thread, signals)
    return False


def sys_port_create(kernel: Kernel, thread: Thread, *_: int) -> int:
    port = Port()
    thread.group.owned.append(port)
    return thread.group.caps.insert(Cap(port, HANDLE_RIGHTS))


def sys_object_wait_async(
    kernel: Kernel, thread: Thread, slot: int, port_slot: int, key: int, signals: int, *_: int
) -> int:
    endpoint = thread.group.caps.lookup(slot, Endpoint, Rights.WAIT)
    port = thread.group.caps.lookup(port_slot, Port, Rights.WRITE)
    if not signals & ALL_SIGNALS or signals & ~ALL_SIGNALS:
        raise SyscallError(Errno.EINVAL, f"signals {signals:#x}")
    observer = partial(_async_done, port, key, signals)
    if observer(endpoint, endpoint.signals()):
        endpoint.observers.append(observer)
    return 0


def _async_done(port: Port, key: int, wanted: int, _: Endpoint, signals: int) -> bool:
    """One-shot: queue a packet the first time a wanted signal is asserted."""
    if signals & wanted:
        port.queue(key, signals)
        return False
    return port.alive


def sys_port_wait(kernel: Kernel, thread: Thread, port_slot: int, *_: int) -> int | None:
    port = thread.group.caps.lookup(port_slot, Port, Rights.WAIT)
    if port.packets:
        key, signals = port.packets.popleft()
        thread.context[Reg.RDI], thread.context[Reg.RSI] = key, signals
        return 0
    port.waiters.append(partial(_packet_for, kernel, thread))
    kernel.sched.block(thread, f"wait on port (slot {port_slot})")
    return None


def _packet_for(kernel: Kernel, thread: Thread, key: Any, signals: int) -> bool:
    if not _blocked(thread):
        return False
    if signals == PORT_GONE:
        kernel.wake_with(thread, -Errno.EBADCAP)
        return True
    thread.context[Reg.RDI], thread.context[Reg.RSI] = key, signals
    kernel.wake_with(thread, 0)
    return True
