"""SkyBridge's bindings: server ids, EPTP lists, and each binding's trampoline and pages.

What the kernel (with SkyBridge's Rootkernel) sets up when a client binds to a server:
  - each party gets an EPTP index (its server id, 1..511) the first time it binds;
  - a trampoline (bridge/trampoline.py) mapped r-x at the same address in both page
    tables, a client record page in the client, and a server record page and a
    server stack in the server, each at a system-wide address of the binding's slot;
  - the calling key, made here at binding time, written into both records;
  - the EPTP lists of every process (machine/vmfunc.py), recomputed: a process's list
    holds its own page table (at index 0 and at its own id) and every server it can
    reach through bindings, directly or nested (a server calls on in the caller's
    thread, so the caller's list must hold the servers further on; SkyBridge's lists
    are per process). Calling keys are what stop a client from calling a server it
    reaches only through another one.

Invariants:
  - The binding graph is acyclic (a server never reaches its own client), so no thread
    of a server is ever in a client's view unless the client called it.
  - Every page here is the kernel's: the guest cannot map over it (the range is
    mapped) nor unmap it (it is no memory object); frames are freed only after their
    mappings are gone.
  - A party's code is scanned for VMFUNC at every byte offset before its first binding
    (bridge/scan.py), and it has no writable executable page, so the only vmfuncs it
    can execute are its trampolines'.
Who may call: kernel/ipc/skybridge.py only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.bridge import trampoline
from underbridge.bridge.scan import vmfunc_sites
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr
from underbridge.machine.vmfunc import EPTP_LIST_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection

TRAMPOLINE_WINDOW = 0x6000_0000  # r-x, in both parties: one page per binding slot
CLIENT_WINDOW = 0x6800_0000  # the client's record, one page per slot
SERVER_WINDOW = 0x7000_0000  # per slot: the server's record, a guard page, its stack
SERVER_SLOT = 8 * PAGE_SIZE
SERVER_STACK_PAGES = 4
MAX_SLOTS = ((1 << 31) - SERVER_WINDOW) // SERVER_SLOT
# A server's maximum concurrency: each binding has its own server stack, so this many
# calls can be in the server at once. SkyBridge has the server register it; our IPC
# ABI has no field for it, so it is one constant for every server.
MAX_CONCURRENCY = 64


def in_trampoline(rip: int) -> bool:
    """Is rip in trampoline code (where tearing a binding down would strand a thread)?"""
    return TRAMPOLINE_WINDOW <= rip < TRAMPOLINE_WINDOW + MAX_SLOTS * PAGE_SIZE


# What a trampoline becomes once its server is gone: `mov rax, -EPIPE; ret`.
_TOMBSTONE = bytes.fromhex("48c7c0e0ffffff") + b"\xc3"
_CODE = PageFlags(user=True, executable=True)
_DATA = PageFlags(user=True, writable=True)


@dataclass(eq=False)
class Binding:
    conn: Connection
    slot: int
    client: CapGroup
    server: CapGroup
    key: int
    pages: list[tuple[PageTable, int]] = field(default_factory=list)  # (table, vaddr)

    @property
    def address(self) -> int:
        return TRAMPOLINE_WINDOW + self.slot * PAGE_SIZE

    @property
    def client_record(self) -> int:
        return CLIENT_WINDOW + self.slot * PAGE_SIZE

    @property
    def server_record(self) -> int:
        return SERVER_WINDOW + self.slot * SERVER_SLOT

    @property
    def stack_top(self) -> int:
        return self.server_record + 2 * PAGE_SIZE + SERVER_STACK_PAGES * PAGE_SIZE


class Bindings:
    """Every binding, the parties' EPTP indices, and the lists they make."""

    def __init__(self) -> None:
        self.ids: dict[CapGroup, int] = {}
        self._by_conn: dict[Connection, Binding] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._clean: set[CapGroup] = set()  # parties whose code was scanned clean
        self._tombstones: dict[CapGroup, list[tuple[int, PhysAddr]]] = {}  # (slot, frame)

    def __iter__(self) -> Iterator[Binding]:
        return iter(list(self._by_conn.values()))

    def of(self, conn: Connection) -> Binding | None:
        return self._by_conn.get(conn)

    # -- who reaches whom --------------------------------------------------------------

    def reach(self, group: CapGroup) -> set[CapGroup]:
        """The servers `group` can call, directly or through other servers."""
        seen: set[CapGroup] = set()
        todo = [group]
        while todo:
            here = todo.pop()
            for binding in self._by_conn.values():
                if binding.client is here and binding.server not in seen:
                    seen.add(binding.server)
                    todo.append(binding.server)
        return seen

    def view_owner(self, root: int) -> CapGroup | None:
        """The party whose page table is rooted at `root` (SkyBridge's identity page)."""
        return next((g for g in self.ids if g.vmspace.table.root == root), None)

    # -- binding ---------------------------------------------------------------------

    def bind(self, kernel: Kernel, conn: Connection) -> Binding:
        """Check, then set up a binding for a new connection (nothing left on failure)."""
        client, server = conn.client, conn.service.server
        self._check(kernel, client, server)
        slot = self._take_slot()
        binding = Binding(conn, slot, client, server, secrets.randbits(64) | 1)
        try:
            for party in (client, server):
                self._ensure_id(party)
            self._map(kernel, binding)
        except BaseException:
            self._unmap(kernel, binding)
            self._free_slots.append(slot)
            raise
        self._by_conn[conn] = binding
        self.install_lists(kernel)
        return binding

    def _check(self, kernel: Kernel, client: CapGroup, server: CapGroup) -> None:
        if client is not server and client in self.reach(server) | {server}:
            raise SyscallError(
                Errno.EDEADLK, f"{server.name} already reaches {client.name}: a cycle"
            )
        if sum(b.server is server for b in self._by_conn.values()) >= MAX_CONCURRENCY:
            raise SyscallError(Errno.ENOSPC, f"{server.name} has {MAX_CONCURRENCY} bindings")
        for party in (client, server):
            self._scan(kernel, party)

    def _scan(self, kernel: Kernel, party: CapGroup) -> None:
        """Refuse a party with a VMFUNC anywhere in its executable pages, or with a
        page that is both writable and executable (it could write one later)."""
        if party in self._clean:
            return
        runs = party.vmspace.code_runs(party.name)
        stray = [site for start, code in runs for site in vmfunc_sites(code, vaddr=start)]
        if stray:
            raise SyscallError(
                Errno.EPERM,
                f"{party.name} holds {len(stray)} stray vmfunc byte sequence(s), "
                f"first at {stray[0]:#x}",
            )
        self._clean.add(party)

    def _take_slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        if self._next_slot >= MAX_SLOTS:
            raise SyscallError(Errno.ENOSPC, "no trampoline slot left")
        self._next_slot += 1
        return self._next_slot - 1

    def _ensure_id(self, party: CapGroup) -> None:
        if party in self.ids:
            return
        used = set(self.ids.values())
        free = next((i for i in range(1, EPTP_LIST_SIZE) if i not in used), None)
        if free is None:
            raise SyscallError(Errno.ENOSPC, "every EPTP index is in use")
        self.ids[party] = free

    def _map(self, kernel: Kernel, binding: Binding) -> None:
        client_table = binding.client.vmspace.table
        server_table = binding.server.vmspace.table
        spec = trampoline.TrampolineSpec(
            address=binding.address,
            client_index=self.ids[binding.client],
            server_index=self.ids[binding.server],
            client_record=binding.client_record,
            server_record=binding.server_record,
            stack_top=binding.stack_top,
            handler=binding.conn.service.handler,
            badge=binding.conn.badge,
            buffer=binding.conn.buffer_vaddr,
        )
        code = trampoline.generate(spec)
        mem = kernel.machine.mem
        tables = [client_table] if server_table is client_table else [client_table, server_table]
        for table in tables:
            mem.write(self._page(kernel, binding, table, binding.address, _CODE), code)
            kernel.machine.code_changed(table)
        record = self._page(kernel, binding, client_table, binding.client_record, _DATA)
        mem.write_u64(record + trampoline.CLIENT_KEY, binding.key)
        record = self._page(kernel, binding, server_table, binding.server_record, _DATA)
        mem.write_u64(record + trampoline.SERVER_KEY, binding.key)
        for index in range(SERVER_STACK_PAGES):
            vaddr = binding.stack_top - (index + 1) * PAGE_SIZE
            self._page(kernel, binding, server_table, vaddr, _DATA)

    def _page(
        self, kernel: Kernel, binding: Binding, table: PageTable, vaddr: int, flags: PageFlags
    ) -> PhysAddr:
        if table.lookup(vaddr) is not None:
            raise SyscallError(Errno.EBUSY, f"{vaddr:#x} is taken in a party's address space")
        try:
            frame = kernel.machine.frames.alloc()
        except OutOfMemory as error:
            raise SyscallError(Errno.ENOMEM, str(error)) from None
        try:
            table.map(vaddr, frame, flags)
        except OutOfMemory as error:
            kernel.machine.frames.free(frame)
            raise SyscallError(Errno.ENOMEM, str(error)) from None
        binding.pages.append((table, vaddr))
        return frame

    # -- records -----------------------------------------------------------------------

    def busy(self, kernel: Kernel, binding: Binding) -> bool:
        """Is a call on this binding in progress (the client record's flag)?"""
        frame = binding.client.vmspace.table.translate(binding.client_record)
        return (
            frame is not None and kernel.machine.mem.read_u64(frame + trampoline.CLIENT_BUSY) != 0
        )

    def saved_registers(self, kernel: Kernel, binding: Binding) -> list[int] | None:
        """The caller's registers the call half saved (SAVED_REGS order), and the busy
        flag cleared; None if the record is gone."""
        frame = binding.client.vmspace.table.translate(binding.client_record)
        if frame is None:
            return None
        mem = kernel.machine.mem
        mem.write_u64(frame + trampoline.CLIENT_BUSY, 0)
        return [
            mem.read_u64(frame + trampoline.CLIENT_SAVED + 8 * i)
            for i in range(len(trampoline.SAVED_REGS))
        ]

    # -- unbinding -------------------------------------------------------------------

    def unbind(self, kernel: Kernel, binding: Binding, *, tombstone: bool = False) -> None:
        """Undo a binding. tombstone: the server is gone but the client lives on, so its
        trampoline page stays, rewritten to return -EPIPE at once (the client's library
        still holds the address); it goes, and its slot is free again, with the client."""
        self._by_conn.pop(binding.conn, None)
        kept = None
        if tombstone:
            table = binding.client.vmspace.table
            kept = (binding.address, table.translate(binding.address))
            binding.pages.remove((table, binding.address))
        self._unmap(kernel, binding)
        if kept is not None and kept[1] is not None:
            kernel.machine.mem.write(kept[1], _TOMBSTONE)
            kernel.machine.code_changed(binding.client.vmspace.table)
            self._tombstones.setdefault(binding.client, []).append((binding.slot, kept[1]))
        else:
            self._free_slots.append(binding.slot)
        self.install_lists(kernel)

    def _unmap(self, kernel: Kernel, binding: Binding) -> None:
        for table, vaddr in binding.pages:
            frame = table.unmap(vaddr)
            if frame is not None:
                kernel.machine.frames.free(frame)
        binding.pages.clear()

    def forget(self, kernel: Kernel, group: CapGroup) -> None:
        """A party has ended (its bindings are gone already): its id and list go."""
        self.ids.pop(group, None)
        self._clean.discard(group)
        for slot, frame in self._tombstones.pop(group, []):
            kernel.machine.frames.free(frame)  # its mapping went with the page table
            self._free_slots.append(slot)
        kernel.machine.eptp.remove(group.vmspace.table.root)
        self.install_lists(kernel)

    def install_lists(self, kernel: Kernel) -> None:
        """Give every party the EPTP list its bindings make (module docstring)."""
        for party, own in self.ids.items():
            root = party.vmspace.table.root
            entries = {0: root, own: root}
            entries.update({self.ids[s]: s.vmspace.table.root for s in self.reach(party)})
            kernel.machine.eptp.install(root, entries)
