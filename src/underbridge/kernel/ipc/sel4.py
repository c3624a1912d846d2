"""seL4-style synchronous IPC: Call and ReplyRecv through the kernel, with a direct switch.

Servers live in their own address spaces in ring 3. A call enters the kernel with
`syscall`; if a server thread is waiting, the kernel hands it the message registers
and switches straight to it (no scheduler pass), writing CR3; the server's ReplyRecv
hands the reply back the same way and waits for the next call. Larger data goes
through the connection's shared buffer, which both sides already map.

Hardware events of one round trip (client call -> server -> reply -> client), as the
compiled seL4 fastpath executes them (costs.py, SEL4_FASTPATH):
  call:       syscall, [Call fastpath instructions], CR3 write, sysret
  reply_wait: syscall, [ReplyRecv fastpath instructions], CR3 write, sysret
  with KPTI (seL4's skim window): the fastpath writes CR3 on entry and on exit, the
              exit write being the switch itself: 2 CR3 writes per path, and the
              longer "_kpti" fastpath counts.
No swapgs: a single-core seL4 kernel does not execute one. A test asserts this sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.message import DELIVERY, REPLY
from underbridge.abi.syscalls import Errno, Prot, Rights, Sys
from underbridge.kernel.ipc import Traits
from underbridge.kernel.objects.connection import Connection, Message, Service
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.accounting import Charges

if TYPE_CHECKING:
    from underbridge.kernel.ipc import DomainPlacement
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

_CALL, _RECV = int(Rights.CALL), int(Rights.RECV)
ENTRY_EXIT = Charges.of(("swapgs", 2), "sysret")  # a syscall's primitives
KPTI_ENTRY_EXIT = Charges.of(("swapgs", 2), "sysret", ("cr3_write", 2))
ADDRESS_SPACE_SWITCH = Charges.of("cr3_write")


def receive_label(service: Service) -> str:
    """What a user-space server's thread blocked in REPLY_WAIT waits on (its
    `waiting_on`; migrate.py reads it). The fast path's hand_over writes the same text
    inline, to stay free of a call."""
    return f"receive on {service.name}"


def deliver(server: Thread, conn: Connection, msg: Message) -> None:
    """Put a call into a server thread's registers, as REPLY_WAIT returns it."""
    server.context.set_registers(DELIVERY, (0, conn.badge, conn.buffer_vaddr, *msg))
    server.reply_to = None
    server.serving = conn  # its buffer stays mapped here until the next REPLY_WAIT


def give_reply(caller: Thread, reply: Message) -> None:
    caller.context.set_registers(REPLY, (0, *reply))
    caller.calling = None


class Sel4Ipc:
    """Every server in user space; calls through the kernel (`domains` is None)."""

    placement: DomainPlacement | None = None

    def __init__(self, *, kpti: bool) -> None:
        self.kpti = kpti
        self.name = "sel4-kpti" if kpti else "sel4"
        # Without KPTI, a syscall costs its primitives and the run loop charges the
        # address-space switch; with KPTI the entry and exit paths write CR3, the exit
        # write being the switch.
        self.traits = Traits(
            servers_in_kernel=False,
            syscall_entry_exit=KPTI_ENTRY_EXIT if kpti else ENTRY_EXIT,
            address_space_switch=None if kpti else ADDRESS_SPACE_SWITCH,
        )
        self._call_path = self._path_charges("sel4_fastpath_call")
        self._reply_wait_path = self._path_charges("sel4_fastpath_replyrecv")

    def _path_charges(self, path: str) -> Charges:
        """The kernel side of one fastpath: its instructions, its CR3 writes, sysret.

        Without KPTI the one CR3 write is the address-space switch, which the run loop
        charges when it resumes the other side.
        """
        if self.kpti:
            return Charges.of(f"{path}_kpti", "sysret", ("cr3_write", 2))
        return Charges.of(path, "sysret")

    # -- the fast path --------------------------------------------------------------

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        """IPC_CALL or IPC_REPLY_WAIT in its common case, checked first, then committed
        (seL4's fastpath); False when a check fails, having changed nothing, so the
        slow path (dispatch, handlers/ipc.py, `call`/`reply_wait`) takes the syscall.

        It skips the dispatch table and the handlers' exceptions (once its checks pass
        no error is possible), charges its path's events in one call, and switches
        threads in one scheduler call. The slow path does the same things in the same
        order when the same checks hold, so state and counts are identical.
        """
        if number == Sys.IPC_CALL:
            return self._fast_call(kernel, thread, args)
        if number == Sys.IPC_REPLY_WAIT:
            return self._fast_reply_wait(kernel, thread, args)
        return False

    def _fast_call(self, kernel: Kernel, client: Thread, args: tuple[int, ...]) -> bool:
        """The call goes straight to a waiting server thread."""
        conn = client.group.caps.peek(args[0], Connection, _CALL)
        if conn is None or not conn.service.alive or not conn.service.receivers:
            return False
        service = conn.service
        kernel.machine.charge_all(self._call_path)
        client.calling = conn
        server = service.receivers.popleft()
        deliver(server, conn, args[1:5])
        server.reply_to = client
        kernel.sched.hand_over(client, f"call to {service.name}", server)
        return True

    def _fast_reply_wait(self, kernel: Kernel, server: Thread, args: tuple[int, ...]) -> bool:
        """The reply goes straight to the caller, blocked in its call, and no other call
        is pending: the server waits, and the caller runs."""
        service = server.group.caps.peek(args[0], Service, _RECV)
        caller = server.reply_to
        if (
            service is None
            or service.pending
            or caller is None
            or not caller.alive
            or caller.state is not ThreadState.BLOCKED
        ):
            return False
        kernel.machine.charge_all(self._reply_wait_path)
        server.reply_to = None
        give_reply(caller, args[1:5])
        kernel.sched.hand_over(server, f"receive on {service.name}", caller)  # receive_label
        service.receivers.append(server)
        return True

    # -- the slow path ----------------------------------------------------------------

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        kernel.machine.charge_all(self._call_path)
        service = conn.service
        client.calling = conn
        kernel.sched.block(client, f"call to {service.name}")
        if service.receivers:
            server = service.receivers.popleft()
            deliver(server, conn, msg)
            server.reply_to = client
            kernel.sched.switch_to(server)
        else:
            service.pending.append((client, conn, msg))

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        kernel.machine.charge_all(self._reply_wait_path)
        caller, server.reply_to = server.reply_to, None
        replied = caller is not None and caller.alive and caller.state is ThreadState.BLOCKED
        if replied:
            give_reply(caller, reply)
        if service.pending:
            client, conn, msg = service.pending.popleft()
            deliver(server, conn, msg)
            server.reply_to = client
            if replied:
                kernel.sched.wake(caller)
            return
        kernel.sched.block(server, receive_label(service))
        service.receivers.append(server)
        if replied:
            kernel.sched.switch_to(caller)

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """Map the buffer into both parties' address spaces; no gate."""
        client, server = conn.client.vmspace, conn.service.server.vmspace
        rw = Prot.READ | Prot.WRITE
        client.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        if server is not client:
            server.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        return 0

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Nothing beyond what closing the connection itself does."""

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        """No per-group state."""

    def close_service(self, kernel: Kernel, service: Service) -> None:
        for client, _conn, _msg in service.pending:
            kernel.fail_blocked(client, Errno.EPIPE)
        service.pending.clear()
        service.receivers.clear()
        # Every running group, not just the service's connections: a caller whose
        # connection was closed during its call has left service.connections.
        for group in kernel.groups.values():
            for thread in group.threads if group.running else ():
                if thread.calling is not None and thread.calling.service is service:
                    thread.calling = None
                    kernel.fail_blocked(thread, Errno.EPIPE)
