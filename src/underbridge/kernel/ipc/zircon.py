"""Zircon-style IPC: every connection is a channel, every service a port.

Servers live in their own address spaces in ring 3, as under sel4. The binaries are the
same for every design, so the mapping from the call/reply interface onto channels is
done here, in the kernel, the way Zircon's own libraries use channels:
  - IPC_CONNECT creates a channel for the connection, (client end, server end), and
    arms a repeating wait of the server end on the service's port;
  - IPC_CALL is zx_channel_call on the client end: write the 4 message words after a
    fresh transaction id, block until the reply with that id comes back, read it;
  - IPC_REPLY_WAIT is the server loop of Zircon's RoundTrip_ChannelCall benchmark,
    three Zircon syscalls in one of ours: zx_channel_write of the reply (with the
    call's txid) on the server end it came from, a wait (on the service's port: it
    serves many connections), then zx_channel_read of the endpoint the packet names.
No direct switch: a wake puts the woken thread on the scheduler's ready queue, and the
blocked thread's core runs whichever is next (Zircon's scheduler, not seL4's handoff).
Each wake of a thread blocked in a call or a wait is charged as one hand-off
(zircon_thread_handoff: the wake, the waker's block, the switch to the woken thread).

Hardware and kernel events of one round trip (costs.py: the zircon_* rows are the
operations alone, each Zircon row minus Syscall/Null, so every syscall's entry and exit
is charged once, as this table's syscall, swapgs x2 and sysret):
  client  channel_call:  syscall, swapgs x2, zircon_channel_write,
                         [blocked]  zircon_channel_read, sysret
  switch to the server:  zircon_thread_handoff, cr3_write
  server  channel_write: syscall, swapgs x2, zircon_channel_write, sysret
          wait:          syscall, swapgs x2, zircon_object_wait, [blocked] sysret
          channel_read:  syscall, swapgs x2, zircon_channel_read, sysret
  switch to the client:  zircon_thread_handoff, cr3_write
The guest executes one `syscall` per IPC_REPLY_WAIT; the entries of the wait and the
read, which a Zircon server makes as syscalls of their own, are charged by name. A
server that finds a message already queued does not block, and no hand-off is charged
for it. A test asserts this sequence.

Invariants:
  - A call in progress is an entry in its client end's `calls`; closing either endpoint
    (the connection closes, the service goes) completes it with -EPIPE.
  - A server thread owes at most one reply (`_owed`): the endpoint and txid of the call
    it took; a reply whose channel has closed meanwhile is dropped, as seL4 drops one
    to a dead caller.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Prot
from underbridge.kernel.ipc import Traits
from underbridge.kernel.ipc.sel4 import ADDRESS_SPACE_SWITCH, ENTRY_EXIT, deliver, give_reply
from underbridge.kernel.objects.channel import (
    READABLE,
    ChannelMessage,
    Endpoint,
    Port,
    channel_pair,
)
from underbridge.kernel.objects.connection import Connection, Message, Service
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.accounting import Charges

if TYPE_CHECKING:
    from underbridge.kernel.ipc import DomainPlacement
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

WORDS = struct.Struct("<I4Q")  # txid, then the 4 message words (Zircon's header first)
_ENTRY = (("swapgs", 2),)  # an entry and exit's swapgs; the entry's syscall comes apart
CALL_WRITE = Charges.of(*_ENTRY, "zircon_channel_write")
CALL_READ = Charges.of("zircon_thread_handoff", "zircon_channel_read", "sysret")  # woken
REPLY_WRITE = Charges.of(*_ENTRY, "zircon_channel_write", "sysret")
WAIT = Charges.of(*_ENTRY, "zircon_object_wait")
WAIT_AFTER_REPLY = Charges.of("syscall", *_ENTRY, "zircon_object_wait")  # a 2nd syscall
READ = Charges.of("sysret", "syscall", *_ENTRY, "zircon_channel_read", "sysret")  # wait's exit
CALL_FAILED = Charges.of("sysret")


class ZirconIpc:
    """Every server in user space; calls are channel calls through the kernel."""

    name = "zircon"
    placement: DomainPlacement | None = None
    traits = Traits(
        servers_in_kernel=False,
        syscall_entry_exit=ENTRY_EXIT,
        address_space_switch=ADDRESS_SPACE_SWITCH,
    )

    def __init__(self) -> None:
        self._channels: dict[Connection, tuple[Endpoint, Endpoint]] = {}
        self._connection_of: dict[Endpoint, Connection] = {}  # server ends
        self._ports: dict[Service, Port] = {}
        self._owed: dict[Thread, tuple[Endpoint, int]] = {}

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        """No fast path: Zircon has none; every call goes through dispatch."""
        return False

    # -- connections ----------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """Map the buffer into both parties; make the connection's channel and arm its
        server end on the service's port. No gate."""
        client, server = conn.client.vmspace, conn.service.server.vmspace
        rw = Prot.READ | Prot.WRITE
        client.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        if server is not client:
            server.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        client_end, server_end = channel_pair()
        port = self._ports.setdefault(conn.service, Port())
        server_end.observers.append(partial(_packet_on, port))
        self._channels[conn] = (client_end, server_end)
        self._connection_of[server_end] = conn
        return 0

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Close the connection's channel: a call in progress on it fails with -EPIPE."""
        ends = self._channels.pop(conn, None)
        if ends is not None:
            self._connection_of.pop(ends[1], None)
            for end in ends:
                end.close()

    def close_service(self, kernel: Kernel, service: Service) -> None:
        """The service's port goes; its connections' channels close right after
        (Kernel.destroy_object closes each connection), failing their callers."""
        port = self._ports.pop(service, None)
        if port is not None:
            port.destroy()

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        for thread in group.threads:
            self._owed.pop(thread, None)

    # -- the client: zx_channel_call ---------------------------------------------------

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        kernel.machine.charge_all(CALL_WRITE)
        client_end = self._channels[conn][0]
        txid = client_end.new_txid()
        client.calling = conn
        kernel.sched.block(client, f"channel call to {conn.service.name}")
        client_end.calls[txid] = partial(self._reply_for, kernel, client)
        client_end.write(ChannelMessage(WORDS.pack(txid, *msg)))

    def _reply_for(self, kernel: Kernel, client: Thread, reply: ChannelMessage | None) -> None:
        """The call's reply (or None: the channel closed): read it, wake the caller."""
        if not client.alive or client.state is not ThreadState.BLOCKED:
            return
        client.calling = None
        if reply is None:
            kernel.machine.charge_all(CALL_FAILED)
            kernel.fail_blocked(client, Errno.EPIPE)
            return
        kernel.machine.charge_all(CALL_READ)
        give_reply(client, WORDS.unpack(reply.data)[1:])
        kernel.sched.wake(client)

    # -- the server: channel_write, wait, channel_read ---------------------------------

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        owed = self._owed.pop(server, None)
        if owed is not None:
            kernel.machine.charge_all(REPLY_WRITE)
            end, txid = owed
            if end.peer is not None:  # else the caller's side closed: drop the reply
                end.write(ChannelMessage(WORDS.pack(txid, *reply)))
        kernel.machine.charge_all(WAIT if owed is None else WAIT_AFTER_REPLY)
        port = self._ports.setdefault(service, Port())
        while port.packets:
            end, _signals = port.packets.popleft()
            if self._receive(kernel, server, end):
                return
        kernel.sched.block(server, f"wait on {service.name}")
        port.waiters.append(partial(self._woken, kernel, server, port))

    def _woken(
        self, kernel: Kernel, server: Thread, port: Port, end: Endpoint | None, signals: int
    ) -> bool:
        """A packet for a server thread blocked in its wait; False if it cannot take it."""
        if not server.alive or server.state is not ThreadState.BLOCKED or end is None:
            return False
        if self._receive(kernel, server, end):
            kernel.machine.charge("zircon_thread_handoff")
            kernel.sched.wake(server)
        else:  # the packet's channel closed before it was read: drop it, keep waiting
            port.waiters.appendleft(partial(self._woken, kernel, server, port))
        return True

    def _receive(self, kernel: Kernel, server: Thread, end: Endpoint) -> bool:
        """The wait returned with `end` readable: read its message into the server."""
        conn = self._connection_of.get(end)
        if conn is None or not end.queue:
            return False
        kernel.machine.charge_all(READ)
        message = end.queue.popleft()
        txid, *words = WORDS.unpack(message.data)
        deliver(server, conn, tuple(words))  # type: ignore[arg-type]
        self._owed[server] = (end, txid)
        return True


def _packet_on(port: Port, end: Endpoint, signals: int) -> bool:
    """The repeating wait of a connection's server end: a packet per message queued."""
    if signals & READABLE and end.alive:
        port.queue(end, signals)
    return end.alive
