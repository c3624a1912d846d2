"""UnderBridge IPC: in-kernel servers in execution domains, connected by generated gates.

Placement: a server spawned in kernel space gets an execution domain (bridge/domain.py
states the isolation rules) and runs in ring 0 on the kernel page table in its own
16 MiB virtual-address region. Its service is passive: its main thread's REPLY_WAIT
blocks for good, and callers' threads run its handler through gates (thread migration).

A connection to an in-kernel server gets a key for its buffer and control page (the
server's own for an application's connection, one per pair of in-kernel servers
otherwise: gate_table.py's key economy), a save area in the client's domain, a server
stack in the server's domain, and a gate (bridge/gate.py) in key-0 pages. IPC_CONNECT
returns the gate's address:
  - an in-kernel client calls the gate directly: a round trip is the gate's machine
    code and the handler's, never Python;
  - an application calls IPC_CALL: the kernel switches to the kernel page table and
    calls the gate itself, from key-0 state, then returns to the application.
Connections to servers in user space, and everything for user-space servers, go through
the seL4 design.

Hardware events of one round trip:
  server-server: [gate: rdpkru, wrpkru, handler, wrpkru] - machine code only
  app-server:    syscall, swapgs, [kernel Call fastpath], CR3 write (kernel page
                 table), [gate], CR3 write (back), swapgs, sysret
The kernel's decode-and-dispatch work on the app-server path is charged as seL4's Call
fastpath, the closest measured kernel IPC path (costs.py).

Where the kernel writes a ring-0 thread's PKRU, RSP or RIP, and why each is safe:
  - a PKRU refresh (gate_table.Gates.share_key): only threads that hold the changed domain's PKRU,
    i.e. run its code, get its new PKRU; a thread inside another domain's handler
    keeps that domain's PKRU (break A1 was the opposite);
  - ending a call whose server is gone (`_end_call_in_progress`, gate_calls.unwind):
    registers from the caller's save area, PKRU from the caller's domain, RIP from the
    caller's stack read with the caller's rights;
  - syscall results and replies (sel4.deliver, give_reply, Kernel.wake_with): only RAX
    and message registers, of a thread blocked in a syscall, which it made from its own
    domain (a syscall from inside another domain's handler is refused with -EDEADLK
    before any handler runs, `foreign`);
  - THREAD_CREATE copies its creator's PKRU, which is the creator's own (same reason);
  - preemption never writes registers, and never happens inside a gate (`in_gate`);
  - the kernel's own gate calls for applications run in a context of their own
    (upcall.py), to completion, before any other thread runs.

The parts, one module each: domains.py (admission, regions, keys), gate_table.py (each
connection's gate, slot, pages and key), upcall.py (the kernel's gate calls for
applications), gate_calls.py (calls in progress, from the gates' records),
kernel_space.py (the windows and the kernel's own pages). This module routes each
operation by where the server runs (its calls: passive.py, shared with the monolithic
design), and decides who is to blame for a fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Sys
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.domains import Domains, DomainState
from underbridge.kernel.ipc.gate_calls import caller_of, clear, culprit, path, unwind
from underbridge.kernel.ipc.gate_table import Gates, GateState
from underbridge.kernel.ipc.migrate import Migrator
from underbridge.kernel.ipc.passive import PassiveServers
from underbridge.kernel.ipc.sel4 import Sel4Ipc
from underbridge.kernel.ipc.upcall import KernelCalls
from underbridge.kernel.objects.connection import Connection
from underbridge.machine.accounting import Charges
from underbridge.machine.context import CpuContext
from underbridge.machine.paging import PageFlags

if TYPE_CHECKING:
    from underbridge.bridge import iocall
    from underbridge.bridge.domain import Domain
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

# An application's call: into the kernel, the kernel's decode-and-dispatch (charged as
# seL4's Call fastpath), to the kernel page table; then back, and out.
_APP_CALL_ENTRY = Charges.of(("swapgs", 2), "sel4_fastpath_call", "cr3_write")
_APP_CALL_EXIT = Charges.of("cr3_write", "sysret")


class UnderbridgeIpc(PassiveServers):
    ring = 0  # placed servers run in ring 0
    name = "underbridge"
    app_call_entry = _APP_CALL_ENTRY
    app_call_exit = _APP_CALL_EXIT
    entry_kind = "gates"
    ring = 0  # servers run in ring 0 on the kernel page table

    def __init__(self, *, user_thread_word: bool = False) -> None:
        """user_thread_word: the gates run in ring 3 (pku-user, pku-shared), where the
        current-thread word they read must be a user page: it gets a key of its own that
        every domain may read and none may write (one key fewer for everything else)."""
        self.placement = self  # this design places servers in kernel space (DomainPlacement)
        self._domains = Domains()
        self.keys = self._domains.keys  # the protection keys of domains and connections
        self._gates = Gates(self._domains)
        self.public_key = 0  # the current-thread word's key, if it has one
        word_flags = None
        if user_thread_word:
            self.public_key = self.keys.allocate("the current-thread word")
            self._domains.readable = (self.public_key,)
            word_flags = PageFlags(user=True, pkey=self.public_key)
        self._pages = ks.KernelPages(word_flags=word_flags)
        self._calls = KernelCalls(
            self._pages, self._upcall_culprit, lambda: len(self._domains), self._redirect
        )
        self._user = Sel4Ipc(kpti=False)  # servers in user space, and calls to them
        # Live migration (migrate.py) of ring-0 servers; the ring-3 PKU designs have none.
        self.mover = None if user_thread_word else Migrator(self)
        # Tested first on every IPC_CALL: plain attributes, no call, until a migration
        # maps the shim (redirects.shim_ready).
        self._redirects = None if self.mover is None else self.mover.redirects

    # -- inspectors (for benchmarks, the red team and tests) ------------------------------

    def domain_of(self, group: CapGroup) -> Domain | None:
        state = self._domains.of(group)
        return None if state is None else state.domain

    def placed_groups(self) -> list[CapGroup]:
        return [state.group for state in self._domains]

    def gate_of(self, conn: Connection) -> GateState | None:
        return self._gates.of(conn)

    def gates(self) -> list[GateState]:
        return list(self._gates)

    def io_routines(self, kernel: Kernel) -> iocall.IoRoutines:
        """Where the checked port-I/O routines are (mapping them on first use)."""
        return self._pages.io_routines(kernel)

    # -- placement (DomainPlacement) ----------------------------------------------------

    def admit(
        self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
    ) -> tuple[Domain, int, bytes]:
        """domains.Domains.admit; rewrite=False keeps the binary as built (still verified)."""
        routines = (lambda: self.io_routines(kernel)) if rewrite else None
        return self._domains.admit(name, base, elf, io_routines=routines)

    def refuse(self, domain: Domain) -> None:
        self._domains.refuse(domain)

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        self._domains.adopt(group, domain, base)

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        if self.mover is not None:
            self.mover.ended(group)
        state = self._domains.of(group)
        if state is not None:
            self._gates.release_tombstones(kernel, state.tombstones)
            self._domains.end(kernel, group)

    def in_gate(self, rip: int) -> bool:
        return ks.in_gate(rip)

    def foreign(self, thread: Thread) -> bool:
        """Is this thread executing in another domain (inside a call it made)?"""
        state = self._domains.of(thread.group)
        return state is not None and thread.context.pkru != state.pkru

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        self._pages.set_current_thread(kernel, tid)

    # -- connections ------------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """The connection's gate (0 for an application, which the kernel calls for).
        A new pair of in-kernel servers needs a key: with none left, the placement
        policy may move a server out first (Kernel.make_room); else ENOKEY."""
        server = self._domains.of(conn.service.server)
        if server is not None and self._wants_room(kernel, conn, server):
            server = self._domains.of(conn.service.server)  # it may have moved out
        if server is None:
            return self._user.connect(kernel, conn)
        ks.check_handler(conn.service.name, conn.service.handler, server.base)
        self._pages.ensure(kernel)
        client = self._domains.of(conn.client)
        state = self._gates.open(kernel, conn, client, server)
        # Only an in-kernel client may call the gate itself: an application's page table
        # does not map it, and the kernel calls it on the application's behalf.
        if client is None:
            return 0
        self._gates.held[conn] = state.slot  # its code holds the address from now on
        return state.address

    def _wants_room(self, kernel: Kernel, conn: Connection, server: DomainState) -> bool:
        """Ask for a key to be freed if this connection needs one and none is left."""
        client = self._domains.of(conn.client)
        if self.keys.available or not self._gates.needs_key(client, server):
            return False
        wanted = f"a connection from {conn.client.name} to {conn.service.name}"
        return kernel.make_room is not None and kernel.make_room(wanted)

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Release a connection's gate, keys and pages; a call still in progress on it
        ends first: its thread returns -EPIPE to the caller (gate_table.Gates.close)."""
        state = self._gates.of(conn)
        if state is not None:
            self._end_call_in_progress(kernel, state)
            self._gates.close(kernel, state, server_gone=server_gone)
        elif self.mover is not None:  # its server is in user space now (migrate.py)
            self.mover.closed_without_gate(kernel, conn)

    # -- calls ----------------------------------------------------------------------

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        """An in-kernel client that connected while a party was in user space calls with
        IPC_CALL: the kernel sends it on to its gate (migrate.py); else passive.py."""
        redirects = self._redirects
        if (
            redirects is not None
            and redirects.shim_ready
            and number == Sys.IPC_CALL
            and thread.group in self._domains
            and redirects.redirect(kernel, thread.context)
        ):
            return True
        return super().fastpath(kernel, thread, number, args)

    def _redirect(self, kernel: Kernel, context: CpuContext) -> bool:
        redirects = self._redirects
        return redirects is not None and redirects.redirect(kernel, context)

    def _entry_of(self, conn: Connection) -> GateState | None:
        return self._gates.of(conn)

    def _in_kernel(self, group: CapGroup) -> bool:
        return group in self._domains

    # -- calls in progress ----------------------------------------------------------------

    def _end_call_in_progress(self, kernel: Kernel, state: GateState) -> None:
        """The call through this gate (if any) returns -EPIPE to its caller now."""
        tid = caller_of(kernel.machine, state)
        if not tid:
            return
        for own, context in self._contexts_of(tid):
            route = path(kernel.machine, self._gates, tid, own)
            if state not in route:
                continue
            later = route[route.index(state) + 1 :]
            if unwind(kernel.machine, context, state, tid):
                clear(kernel.machine, later)
            elif state.client is not None:  # the caller forged its save area: its loss
                clear(kernel.machine, [state, *later])
                kernel.kill(state.client.group)

    def _contexts_of(self, tid: int) -> list[tuple[DomainState | None, CpuContext]]:
        """The CPU state (and home domain) of thread `tid`: a ring-0 thread, or the
        kernel's gate call for an application thread."""
        upcall = self._calls.current
        if upcall is not None and upcall.tid == tid:
            return [(None, upcall.context)]
        return [
            (state, thread.context)
            for state in self._domains
            for thread in state.group.threads
            if thread.tid == tid and thread.alive
        ]

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """The cap group whose code `thread` runs, to blame for its fault and whose rights
        apply to its trapped port I/O (gate_calls.culprit says how it is decided)."""
        own = self._domains.of(thread.group)
        if own is None:
            return thread.group
        return self._culprit(kernel, thread.tid, own, thread.context) or thread.group

    def _upcall_culprit(self, kernel: Kernel, tid: int, context: CpuContext) -> CapGroup | None:
        return self._culprit(kernel, tid, None, context)

    def _culprit(
        self, kernel: Kernel, tid: int, own: DomainState | None, context: CpuContext
    ) -> CapGroup | None:
        route = path(kernel.machine, self._gates, tid, own)
        party = culprit(route, own, context.pkru, ks.in_gate(context.rip), self._domains)
        return None if party is None else party.group
