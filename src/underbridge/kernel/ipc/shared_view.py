"""pku-shared's shared view: every placed server's pages in every joined application's
page table, and what keeping them there costs.

The placed servers' pages live on one master table (Machine.kernel_space, where the
UnderBridge machinery puts them: domains.py, gate_table.py, kernel_space.py). Under
pku-shared the servers run there in ring 3, and an application that connects to a
placed server *joins*: its own page table gets a copy of every shared entry (same
frame, same flags, same key), and from then on every change the kernel makes to a
shared address of the master is repeated in every joined application's table
(`PageTable.also_on_change`). Shared addresses: the servers' regions (below
kernel_space.LOW_LIMIT), the gate and control windows, the checked I/O routines, the
current-thread word, and the connections' buffers (IPC_WINDOW). A save area in
KERNEL_SAVE_WINDOW is copied into the one application whose connection it serves.

Invariants (why an application cannot get around them):
  - An application joins only after its executable pages scanned clean of wrpkru,
    XRSTOR and XRSTORS at every byte offset (bridge/scan.py), with no page both
    writable and executable; otherwise IPC_CONNECT fails with EPERM and nothing of a
    server is mapped into it. So its PKRU changes only by a gate's checked wrpkru.
  - A joined application's threads run with the PKRU the kernel chose (`Joined.pkru`):
    key 0 (its own pages), the shared keys of its connections, the public key read
    only. Every server page carries its domain's key, which that PKRU closes: reading
    a server's page faults with a PKU violation.
  - Its own memory objects may then be mapped only above the shared windows
    (guest_window), so PMO_MAP cannot claim a server's address.
  - The shared entries are the kernel's: the application's VmSpace does not list them,
    so it can neither unmap nor remap them.

What it costs, counted (no published cycle figure exists for a page-table entry write,
so these are event counts, never cycles): `Counters.pte_writes`, leaf entries written
in applications' tables; `table_frames`, page-table frames they needed; `conflicts`,
shared entries an application's own page stood in the way of (that page stays; see the
README's list of what is missing); `scanned_bytes`, application code scanned at join.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.bridge.scan import scan_code
from underbridge.errors import SyscallError
from underbridge.kernel.handlers.ipc import IPC_WINDOW
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.machine.pkru import pkru_allowing

if TYPE_CHECKING:
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.machine.paging import Mapping, PageTable

APP_KEY = 0  # a joined application's own pages keep key 0, which no server PKRU opens
SHARED_TOP = 1 << 31  # every shared window lies below (gates use 32-bit addresses)
IPC_WINDOW_END = IPC_WINDOW + (1 << 44)  # room for 2**28 connections (64 KiB each)


def shared(vaddr: int) -> bool:
    """Is `vaddr` a shared address (copied into every joined application)?"""
    if ks.KERNEL_SAVE_WINDOW <= vaddr < ks.IO_ROUTINES_PAGE:
        return False  # save areas: one application each
    return vaddr < SHARED_TOP or IPC_WINDOW <= vaddr < IPC_WINDOW_END


@dataclass
class Counters:
    pte_writes: int = 0
    table_frames: int = 0
    conflicts: int = 0
    scanned_bytes: int = 0


@dataclass(eq=False)
class Joined:
    group: CapGroup
    public_key: int
    keys: set[int] = field(default_factory=set)  # shared keys of its connections
    copied: set[int] = field(default_factory=set)  # the entries that are the master's
    tombstones: list[int] = field(default_factory=list)  # gate slots answering -EPIPE

    @property
    def pkru(self) -> int:
        return pkru_allowing(read_write=[APP_KEY, *sorted(self.keys)], read_only=[self.public_key])

    @property
    def table(self) -> PageTable:
        return self.group.vmspace.table


class SharedView:
    """The joined applications, and the copying of shared entries into their tables."""

    def __init__(self, master: PageTable, public_key: int) -> None:
        self._master = master
        self.public_key = public_key
        self.apps: dict[CapGroup, Joined] = {}
        self.save_owner: dict[int, CapGroup] = {}  # a save-area page -> its application
        self.counters = Counters()
        master.also_on_change(self._changed)

    def of(self, group: CapGroup) -> Joined | None:
        return self.apps.get(group)

    def tombstones_of(self, group: CapGroup) -> list[int] | None:
        joined = self.apps.get(group)
        return None if joined is None else joined.tombstones

    # -- joining and leaving --------------------------------------------------------

    def join(self, group: CapGroup) -> Joined:
        """Scan the application, copy every shared entry into its table, set its PKRU."""
        joined = self.apps.get(group)
        if joined is not None:
            return joined
        self._scan(group)
        joined = Joined(group, self.public_key)
        low, high = group.vmspace.guest_window
        group.vmspace.guest_window = (max(low, SHARED_TOP), min(high, IPC_WINDOW))
        self.apps[group] = joined
        for vaddr, mapping in list(self._master.mappings()):
            if shared(vaddr):
                self._copy(joined, vaddr, mapping)
        self.set_pkru(joined)
        return joined

    def leave(self, group: CapGroup) -> list[int]:
        """The application has ended: its table goes with it (its entries are not ours).
        Its tombstone gate slots, for the caller to release."""
        joined = self.apps.pop(group, None)
        for page in [p for p, owner in self.save_owner.items() if owner is group]:
            del self.save_owner[page]
        return [] if joined is None else joined.tombstones

    def set_pkru(self, joined: Joined) -> None:
        """Every thread of the application now runs with its PKRU (its keys changed)."""
        for thread in joined.group.threads:
            if thread.alive:
                thread.context.pkru = joined.pkru

    def _scan(self, group: CapGroup) -> None:
        """EPERM if the application's code could write PKRU (module docstring)."""
        runs = group.vmspace.code_runs(group.name)
        self.counters.scanned_bytes += sum(len(code) for _, code in runs)
        found = [f for start, code in runs for f in scan_code(code, vaddr=start) if f.writes_pkru]
        if found:
            where = ", ".join(f"{f.kind} at {f.vaddr:#x}" for f in found[:3])
            raise SyscallError(
                Errno.EPERM,
                f"{group.name} can write PKRU ({where}): under pku-shared every server "
                "is mapped into it, so it may not keep protection keys of its own",
            )

    # -- following the master ---------------------------------------------------------

    def _changed(self, vaddr: int) -> None:
        if ks.KERNEL_SAVE_WINDOW <= vaddr < ks.IO_ROUTINES_PAGE:
            owner = self.save_owner.get(vaddr)
            targets = [self.apps[owner]] if owner in self.apps else []
        elif shared(vaddr):
            targets = list(self.apps.values())
        else:
            return
        mapping = self._master.lookup(vaddr)
        for joined in targets:
            self._copy(joined, vaddr, mapping)

    def copy_save_area(self, group: CapGroup, vaddr: int) -> None:
        """A save area the master holds already goes to its application now."""
        self.save_owner[vaddr] = group
        joined = self.apps.get(group)
        if joined is not None:
            self._copy(joined, vaddr, self._master.lookup(vaddr))

    def _copy(self, joined: Joined, vaddr: int, mapping: Mapping | None) -> None:
        """Make the application's entry at vaddr the master's (None: absent); an entry
        of the application's own is never touched."""
        table = joined.table
        current = table.lookup(vaddr)
        if current is not None and vaddr not in joined.copied:
            self.counters.conflicts += 1  # the application's own page: it stays
            return
        frames = table.table_frames
        if mapping is None:
            if current is None:
                return
            table.unmap(vaddr)
            joined.copied.discard(vaddr)
        elif current is None:
            table.map(vaddr, mapping.frame, mapping.flags)
            joined.copied.add(vaddr)
        elif current.frame != mapping.frame:  # never seen: the master unmaps first
            table.unmap(vaddr)
            table.map(vaddr, mapping.frame, mapping.flags)
        elif current.flags != mapping.flags:
            table.protect(vaddr, mapping.flags)
        else:
            return
        self.counters.pte_writes += 1
        self.counters.table_frames += max(0, table.table_frames - frames)
