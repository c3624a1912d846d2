"""UnderBridge's live migration: a running server moves between user space (its own page
table, ring 3, kernel IPC) and kernel space (an execution domain on the kernel page
table, ring 0, gates), and back, without a restart (kernel/migration.py says when).

Why no page is copied: every in-kernel server is linked at its own REGION_SIZE region
below kernel_space.LOW_LIMIT, and a migratable server runs in user space with its stack
at the same place as in kernel space (`region_stack_top`), so every address it holds is
valid in both placements. Moving re-maps the same frames at the same addresses on the
other page table, with the other key; the threads keep their registers, and only their
ring, page table and PKRU change. Connection buffers already have one system-wide
address each (handlers/ipc.py, IPC_WINDOW).

Moving in runs the admission of a spawn in kernel space (domains.Domains.admit: scan,
rewrite, verify); it is refused, with the report and nothing changed, if the code can
change PKRU, if the rewriter would change code that is already running, or if a page lies
outside the server's region. Each connection to it then gets a gate: one the kernel calls
for an application (gate_table.Gates.open with no client domain), one made for an
in-kernel client's domain (its IPC_CALL reaches it through the shim, redirect.py); its own
connections to in-kernel servers get gates made for it. Moving out closes those gates
(their keys, pages and the buffers' kernel-table mappings; a slot whose address a client
holds stays held), removes every page of the server from the kernel page table, releases
its key, and its threads wait for calls in REPLY_WAIT again (seL4 path).
Only the kernel runs this, between two kernel events (never while a guest runs).

Invariants:
  - Only a quiescent server moves (`quiescent`): its threads are all waiting for calls
    (REPLY_WAIT), and no call to it is queued or in progress (no reply owed in user
    space; no gate records a caller in kernel space).
  - `check` decides everything that can refuse before `move` changes anything; admission,
    the one check that needs the key, gives the key back when it refuses.
  - After moving out, the kernel page table maps nothing of the server: not its image,
    not its stacks, not a gate, a control page or a buffer of its connections.
  - A handler in kernel space cannot make kernel IPC calls (upcall.py), so a server that
    calls a server in user space is not moved in (move that one in first), and a server
    with an in-kernel client that serves too is not moved out (move the client out
    first). An in-kernel client that serves nothing keeps calling from its own threads:
    its gate address then holds a kernel forwarder (redirect.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Prot
from underbridge.elf.image import parse_elf
from underbridge.errors import SyscallError, UserError
from underbridge.kernel.handlers.ipc import IPC_WINDOW
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.gate_calls import caller_of
from underbridge.kernel.ipc.redirect import Redirects
from underbridge.kernel.ipc.sel4 import receive_label
from underbridge.kernel.migration import Migration, refuse
from underbridge.kernel.objects.connection import Connection, Service
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.kernel.objects.vmspace import USER_END, USER_MIN, VmSpace
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.ipc.domains import DomainState
    from underbridge.kernel.ipc.gate_table import GateState
    from underbridge.kernel.ipc.underbridge import UnderbridgeIpc
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

_RW = Prot.READ | Prot.WRITE
_KEPT = tuple(reg for reg in Reg if reg is not Reg.CR3)  # a moved thread's registers


def region_stack_top(base: int) -> int:
    """The initial stack top of a server linked at `base`, the same in both placements
    (`Kernel.spawn(..., stack_top=region_stack_top(base))` in user space)."""
    return base + ks.REGION_SIZE - PAGE_SIZE


def _base(group: CapGroup) -> int:
    """The link base of a group's binary: its region, in kernel space."""
    assert group.elf is not None
    return parse_elf(group.elf, name=group.name).segments[0].vaddr


def services_of(group: CapGroup) -> list[Service]:
    return [obj for obj in group.owned if isinstance(obj, Service) and obj.alive]


def client_connections(group: CapGroup) -> list[Connection]:
    return [obj for obj in group.owned if isinstance(obj, Connection) and obj.alive]


class Migrator:
    """UnderBridge's mover (kernel/migration.py's `Mover`)."""

    def __init__(self, design: UnderbridgeIpc) -> None:
        self._design = design
        self._redirects = Redirects(design._domains, design._gates)

    @property
    def redirects(self) -> Redirects:
        """The shim and forwarders; `redirects.shim_ready` is False until a migration
        first needs them (the IPC fast path tests it before anything else)."""
        return self._redirects

    def redirect(self, kernel: Kernel, context: CpuContext) -> bool:
        """redirect.Redirects.redirect: an in-kernel client's IPC_CALL to its gate."""
        return self._redirects.redirect(kernel, context)

    def ended(self, group: CapGroup) -> None:
        self._redirects.forget(group)

    def closed_without_gate(self, kernel: Kernel, conn: Connection) -> None:
        """A connection with no gate (its server is in user space) closes: the kernel
        forwarder and the slot it held are free again."""
        self._redirects.drop_kernel_forwarder(kernel, conn)
        self._design._gates.release_held(conn)

    # -- when ----------------------------------------------------------------------

    def quiescent(self, kernel: Kernel, group: CapGroup) -> bool:
        services = services_of(group)
        threads = [t for t in group.threads if t.alive]
        if any(t.state is not ThreadState.BLOCKED or t.reply_to is not None for t in threads):
            return False
        state = self._design._domains.of(group)
        if state is None:
            waiting = [t for s in services for t in s.receivers]
            return not any(s.pending for s in services) and all(t in waiting for t in threads)
        serving = {self._design.serving_label(s) for s in services}
        if not all(t.waiting_on in serving for t in threads):
            return False
        return all(
            caller_of(kernel.machine, gate) == 0
            for gate in self._design.gates()
            if gate.server is state
        )

    # -- whether -------------------------------------------------------------------

    def check(self, kernel: Kernel, group: CapGroup, *, to_kernel: bool) -> str:
        if not group.running:
            return f"{group.name} has ended"
        if group.linux is not None:
            return f"{group.name} is a Linux-ABI program, which runs in user space only"
        if not services_of(group):
            return f"{group.name} serves no service"
        state = self._design._domains.of(group)
        if to_kernel:
            if state is not None:
                return f"{group.name} is in kernel space already"
            outside = [
                c.service.server.name
                for c in client_connections(group)
                if self._design.domain_of(c.service.server) is None
            ]
            if outside:
                return (
                    f"{group.name} calls {', '.join(outside)}, in user space: a handler "
                    "in kernel space cannot make kernel IPC calls (move it in first)"
                )
            if group.elf is None:
                return f"{group.name}'s binary is not known"
            return self._keys_problem(group) or self._layout_problem(group, _base(group))
        if state is None:
            return f"{group.name} is in user space already"
        gates = self._design.gates()
        serving = [
            g.conn.client.name
            for g in gates
            if g.server is state and g.client and services_of(g.client.group)
        ]
        if serving:
            return (
                f"{', '.join(serving)}, in kernel space, call {group.name}: a handler in "
                "kernel space cannot make kernel IPC calls (move them out first)"
            )
        return ""

    def _keys_problem(self, group: CapGroup) -> str:
        """Too few keys to move in: its domain takes one, and so does each in-kernel
        server it will share connections with (one key per pair, gate_table.py); an
        application's connection takes none. Checked first, so a move never stops
        half-way for want of a key."""
        peers = {c.client for s in services_of(group) for c in s.connections}
        peers |= {c.service.server for c in client_connections(group)}
        placed = [p for p in peers if p is not group and self._design.domain_of(p) is not None]
        needed, free = 1 + len(placed), self._design.keys.available
        if needed <= free:
            return ""
        return (
            f"no protection key left for {group.name}: it needs {needed} (its domain and "
            f"one per in-kernel server it is connected to), {free} free"
        )

    def _layout_problem(self, group: CapGroup, base: int) -> str:
        """A page of the group outside its region, if any (it could not keep its
        address in kernel space)."""
        space = group.vmspace
        forwarders = self._redirects.forwarders.get(group, [])
        for vaddr in [*space.private_pages, *space.anon_frames]:
            if vaddr not in forwarders and not base <= vaddr < base + ks.REGION_SIZE:
                return (
                    f"{group.name}'s page at {vaddr:#x} lies outside its region "
                    f"[{base:#x}, {base + ks.REGION_SIZE:#x}) (spawn it with "
                    "stack_top=region_stack_top(base) to make it migratable)"
                )
        for vaddr, mapping in space.pmo_mappings.items():
            if mapping.pinned and vaddr >= IPC_WINDOW:
                continue  # a connection's buffer: the gates map it
            if not base <= vaddr < base + ks.REGION_SIZE // 2:
                return f"{group.name} maps a memory object at {vaddr:#x}, outside its window"
        return ""

    # -- how -----------------------------------------------------------------------

    def move(self, kernel: Kernel, group: CapGroup, migration: Migration) -> None:
        if migration.direction == "in":
            self._move_in(kernel, group, migration)
        else:
            self._move_out(kernel, group, migration)

    def _move_in(self, kernel: Kernel, group: CapGroup, migration: Migration) -> None:
        design = self._design
        elf, base = group.elf, _base(group)
        assert elf is not None  # check() refused it otherwise
        conns = [c for service in services_of(group) for c in service.connections]
        stranded = [self._redirects.threads_in_forwarder(c) for c in conns]
        if any(contexts is None for contexts in stranded):
            refuse(migration, "a client thread is stopped inside its forwarder")
            return
        try:
            domain, _stack_top, data = design.admit(kernel, group.name, base, elf)
        except (UserError, SyscallError) as error:  # unsafe, region taken, no key left
            refuse(migration, str(error))
            return
        if data != elf:
            design.refuse(domain)
            refuse(
                migration,
                f"{group.name}: the rewriter would change its code, which is running "
                "(a running server's code is never patched); spawn it in kernel space",
            )
            return
        events = migration.events
        space = group.vmspace
        machine = kernel.machine
        for contexts in stranded:  # their next instructions: the kernel runs them
            if contexts:
                events["instructions"] += self._redirects.finish_forwarder(kernel, contexts)
        dropped = self._redirects.drop_forwarders(kernel, group)
        events["pte_writes"] += dropped
        events["tlb_flushes"] += dropped
        events["pte_writes"] += self._redirects.ensure_shim(kernel)
        for vaddr in [v for v, m in space.pmo_mappings.items() if m.pinned]:
            self._unmap_buffer(space, vaddr, migration)
        old = space.table
        pages = self._move_pages(space, old, machine.kernel_space, domain.key)
        migration.pages = len(pages)
        events["key_retags"] += len(pages)  # new PTEs, under the domain's key
        events["pte_writes"] += len(pages)  # cleared from the old table
        events["tlb_flushes"] += len(pages)
        machine.destroy_page_table(old)
        space.table, space.owns_table, space.pkey = machine.kernel_space, False, domain.key
        machine.code_changed(machine.kernel_space)
        design.adopt(group, domain, base)
        state = design._domains.of(group)
        assert state is not None
        for thread in group.threads:
            if thread.alive:
                self._retarget(kernel, thread, 0, machine.kernel_space, domain.pkru, migration)
        for service in services_of(group):
            for thread in list(service.receivers):
                service.receivers.remove(thread)
                thread.waiting_on = design.serving_label(service)
        emitted, words = design._gates.emitted, design._gates.emitted_words
        for service in services_of(group):
            for conn in list(service.connections):
                events["pte_writes"] += self._redirects.drop_kernel_forwarder(kernel, conn)
                client = design._domains.of(conn.client)
                self._open_gate(kernel, conn, client, state, migration)
        for conn in client_connections(group):  # its own calls: a gate made for it
            self._reopen(kernel, conn, state, migration)
        events["gates_generated"] += design._gates.emitted - emitted
        events["gate_words"] += design._gates.emitted_words - words

    def _open_gate(
        self,
        kernel: Kernel,
        conn: Connection,
        client: DomainState | None,
        server: DomainState,
        migration: Migration,
    ) -> None:
        """The connection's next call takes a gate: one the kernel calls for its client
        (client None), or one made for an in-kernel client (which IPC_CALL reaches
        through the shim, or which it calls itself if it holds its address)."""
        client_space = conn.client.vmspace
        if conn.buffer_vaddr in client_space.pmo_mappings:  # the gate maps it again
            self._unmap_buffer(client_space, conn.buffer_vaddr, migration)
        gate = self._design._gates.open(kernel, conn, client, server)
        buffer_pages = len(conn.buffer.frames) * (2 if client is None else 1)
        migration.events["pte_writes"] += (
            len(gate.pages) + sum(count for _, _, count in gate.borrowed) + buffer_pages
        )
        parties = [p for p in (client, server) if p is not None]
        migration.events["context_writes"] += sum(
            1 for p in parties for t in p.group.threads if t.alive
        )
        migration.connections += 1

    def _reopen(
        self, kernel: Kernel, conn: Connection, client: DomainState | None, migration: Migration
    ) -> None:
        """A connection of the moving group as a client, to an in-kernel server: its gate
        is made again, for the client's new placement."""
        server = self._design._domains.of(conn.service.server)
        assert server is not None  # check(): an in-kernel client's servers are in kernel
        old = self._design._gates.of(conn)
        if old is not None:
            self._close_gate(kernel, old, migration)
        self._open_gate(kernel, conn, client, server, migration)

    def _close_gate(self, kernel: Kernel, gate: GateState, migration: Migration) -> None:
        """Close a gate of a living connection: its pages, key, and the buffer's
        kernel-table mapping (a held slot stays held)."""
        freed = len(gate.pages) + sum(count for _, _, count in gate.borrowed)
        self._design._gates.close(kernel, gate, server_gone=False, migrating=True)
        self._unmap_buffer(gate.server.group.vmspace, gate.conn.buffer_vaddr, migration)
        migration.events["pte_writes"] += freed
        migration.events["tlb_flushes"] += freed

    def _move_out(self, kernel: Kernel, group: CapGroup, migration: Migration) -> None:
        design = self._design
        machine = kernel.machine
        state = design._domains.of(group)
        assert state is not None
        events = migration.events
        space = group.vmspace
        in_kernel_clients = []
        for gate in [g for g in design.gates() if g.server is state]:
            self._close_gate(kernel, gate, migration)
            migration.connections += 1
            if gate.client is not None:
                in_kernel_clients.append(gate.conn)
        outgoing = [c for c in client_connections(group) if design._gates.of(c) is not None]
        for conn in outgoing:
            gate = design._gates.of(conn)
            assert gate is not None
            self._close_gate(kernel, gate, migration)
        design._gates.release_tombstones(kernel, state.tombstones)
        table = machine.new_page_table()
        pages = self._move_pages(space, machine.kernel_space, table, 0)
        migration.pages = len(pages)
        events["key_retags"] += len(pages)  # new PTEs, under key 0
        events["pte_writes"] += len(pages)  # cleared from the kernel page table
        events["tlb_flushes"] += len(pages)
        space.table, space.owns_table, space.pkey = table, True, 0
        space.guest_window = (USER_MIN, USER_END)
        for service in services_of(group):
            for conn in service.connections:  # the seL4 path: the buffer in both tables
                space.map_pmo(conn.buffer, conn.buffer_vaddr, _RW, pinned=True)
                events["pte_writes"] += len(conn.buffer.frames)
        for conn in in_kernel_clients:  # kernel IPC from their own threads, under their keys
            conn.client.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr, _RW, pinned=True)
            events["pte_writes"] += len(conn.buffer.frames)
            events["pte_writes"] += self._redirects.add_kernel_forwarder(kernel, conn)
        for conn in outgoing:  # the kernel calls its gates for it now
            self._reopen(kernel, conn, None, migration)
            self._redirects.add_forwarder(kernel, group, conn)
            events["pte_writes"] += 1 if conn in design._gates.held else 0
        design._domains.forget(kernel, group)  # its key, and any page of its region left
        for thread in group.threads:
            if thread.alive:
                self._retarget(kernel, thread, 3, table, 0, migration)
        for service in services_of(group):
            serving = design.serving_label(service)
            for thread in group.threads:
                if thread.alive and thread.waiting_on == serving:
                    thread.waiting_on = receive_label(service)
                    service.receivers.append(thread)
        machine.code_changed(table)

    # -- steps ---------------------------------------------------------------------

    @staticmethod
    def _unmap_buffer(space: VmSpace, vaddr: int, migration: Migration) -> None:
        pages = len(space.pmo_mappings[vaddr].pmo.frames)
        space.unmap_pmo(vaddr)
        migration.events["pte_writes"] += pages
        migration.events["tlb_flushes"] += pages

    @staticmethod
    def _move_pages(space: VmSpace, old: PageTable, new: PageTable, key: int) -> list[int]:
        """Map every page of the space (its image, stacks, memory objects; not the
        connection buffers, which the gates or the seL4 path map) on `new` at the same
        address with `key`, and clear it from `old`: the frames stay where they are."""
        moved: list[int] = []
        pmo_pages = [
            vaddr + index * PAGE_SIZE
            for vaddr, mapping in space.pmo_mappings.items()
            for index in range(len(mapping.pmo.frames))
        ]
        for vaddr in [*space.private_pages, *space.anon_frames, *pmo_pages]:
            mapping = old.lookup(vaddr)
            assert mapping is not None, f"{vaddr:#x} is not mapped"
            flags = mapping.flags
            new.map(vaddr, mapping.frame, PageFlags(flags.writable, True, flags.executable, key))
            old.unmap(vaddr)
            moved.append(vaddr)
        return moved

    @staticmethod
    def _retarget(
        kernel: Kernel, thread: Thread, ring: int, table: PageTable, pkru: int, migration: Migration
    ) -> None:
        """The thread goes on where it was, in another ring, on another page table, with
        another PKRU: every register but CR3 is kept (its saved ring, CR3 and PKRU are
        the three writes)."""
        context = thread.context
        kept = {reg: context[reg] for reg in _KEPT}
        kernel.machine.reset_context(
            context, ring=ring, page_table=table, rip=kept[Reg.RIP], rsp=kept[Reg.RSP], pkru=pkru
        )
        for reg, value in kept.items():
            context[reg] = value
        migration.events["context_writes"] += 3
