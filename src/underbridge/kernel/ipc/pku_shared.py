"""pku-shared: the UnderBridge talk's rejected design choice 2. Servers are mapped into
every application's address space, each in its own protection-key domain, and an
application calls a server's gate itself, in ring 3, without entering the kernel.

Placement is UnderBridge's machinery (domains.py: scan, rewrite, verify, one key per
server; gate_table.py: a gate, control page, shared key and server stack per
connection; kernel_space.py: the regions and windows), with two differences:
  - placed servers run in ring 3 (`ring`), on the master table where that machinery
    puts their pages (Machine.kernel_space);
  - an application that connects to a placed server joins the shared view
    (shared_view.py): its code is scanned for PKRU writers (refused with EPERM), every
    shared entry of the master is copied into its page table and kept in step, its
    threads get a PKRU of the kernel's choosing, and IPC_CONNECT returns the gate.
The current-thread word the gates read (bridge/gate.py, steps 2 and 6) must be
readable in ring 3 by every caller, so it is a U=1 read-only page under a public key
every PKRU opens read-only: one of the 15 keys goes to it.

Hardware events of one round trip, both paths (the same gate; no syscall, no CR3):
  [gate: rdpkru, wrpkru, handler, wrpkru]
wrpkru is charged its row (costs.py); everything else is executed instructions.

What the design costs elsewhere (bench/pku_shared.py measures it): every server page
is one page-table entry per joined application, so placing a server, growing its
heap and opening a connection write N entries for N applications; an application is
scanned before it may connect, may hold no PKRU writer of its own, and runs with the
kernel's PKRU (no protection key is left for its own use).

An application's IPC_CALL on a connection to a placed server gets -EINVAL: the gate is
its way in. Connections to servers in user space go through the seL4 design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Rights, Sys
from underbridge.errors import SyscallError
from underbridge.kernel.ipc.gate_table import Gates
from underbridge.kernel.ipc.shared_view import Joined, SharedView
from underbridge.kernel.ipc.underbridge import UnderbridgeIpc
from underbridge.kernel.objects.connection import Connection

if TYPE_CHECKING:
    from underbridge.kernel.ipc.domains import DomainState
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Message
    from underbridge.kernel.objects.thread import Thread
    from underbridge.machine.context import CpuContext

_CALL = int(Rights.CALL)


class PkuSharedIpc(UnderbridgeIpc):
    name = "pku-shared"
    ring = 3  # placed servers run in ring 3: mapped into applications, not sunk
    entry_kind = "gates mapped into applications"

    def __init__(self) -> None:
        super().__init__(user_thread_word=True)
        self.view: SharedView | None = None  # made on the first connection (needs the machine)
        self._gates = Gates(
            self._domains,
            map_app_buffer=False,
            app_key_per_connection=True,  # the application opens its connection's key
            app_tombstones=lambda group: (
                None if self.view is None else self.view.tombstones_of(group)
            ),
        )

    def shared_view(self, kernel: Kernel) -> SharedView:
        if self.view is None:
            self.view = SharedView(kernel.machine.kernel_space, self.public_key)
        return self.view

    # -- connections ------------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """A connection to a placed server from an application: the application joins
        the shared view first (EPERM if its code can write PKRU), then gets the gate."""
        if self._domains.of(conn.service.server) is None or conn.client in self._domains:
            return super().connect(kernel, conn)
        joined = self.shared_view(kernel).join(conn.client)
        super().connect(kernel, conn)
        state = self._gates.of(conn)
        assert state is not None
        joined.keys.add(state.shared_key)
        self.shared_view(kernel).copy_save_area(conn.client, state.save_area)
        self._refresh(kernel, joined)
        return state.address

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        state = self._gates.of(conn)
        super().closed(kernel, conn, server_gone=server_gone)
        joined = None if self.view is None else self.view.of(conn.client)
        if state is not None and joined is not None:
            joined.keys.discard(state.shared_key)
            self.view.save_owner.pop(state.save_area, None)  # type: ignore[union-attr]
            self._refresh(kernel, joined)

    def _refresh(self, kernel: Kernel, joined: Joined) -> None:
        """The application's keys changed: its threads and its gates follow."""
        assert self.view is not None
        self.view.set_pkru(joined)
        for gate in self._gates:
            if gate.client is None and gate.conn.client is joined.group:
                gate.app_pkru = joined.pkru
                self._gates.emit(kernel, gate)

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        super().ended(kernel, group)
        if self.view is not None:
            self._gates.release_tombstones(kernel, self.view.leave(group))

    # -- calls ------------------------------------------------------------------------

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        if number == Sys.IPC_CALL:
            conn = thread.group.caps.peek(args[0], Connection, _CALL)
            if conn is not None and self._gates.of(conn) is not None:
                return False  # the slow path refuses it (`call`)
        return super().fastpath(kernel, thread, number, args)

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        if self._gates.of(conn) is not None:
            raise SyscallError(Errno.EINVAL, f"{conn.service.name} is called through its gate")
        super().call(kernel, client, conn, msg)

    # -- who runs what --------------------------------------------------------------------

    def _joined(self, group: CapGroup) -> Joined | None:
        return None if self.view is None else self.view.of(group)

    def foreign(self, thread: Thread) -> bool:
        """Is the thread running a server's code, inside a call it made?"""
        joined = self._joined(thread.group)
        if joined is not None:
            return thread.context.pkru != joined.pkru
        return super().foreign(thread)

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """An application's thread inside a gate call runs the server's code: the
        server is to blame for its fault (gate_calls.culprit, as for the kernel's
        calls under UnderBridge)."""
        if self._joined(thread.group) is None:
            return super().code_owner(kernel, thread)
        return self._culprit(kernel, thread.tid, None, thread.context) or thread.group

    def _contexts_of(self, tid: int) -> list[tuple[DomainState | None, CpuContext]]:
        own = super()._contexts_of(tid)
        apps = [] if self.view is None else list(self.view.apps)
        return own + [
            (None, thread.context)
            for group in apps
            for thread in group.threads
            if thread.tid == tid and thread.alive
        ]
