"""x86-64 4-level page tables, in the real hardware format, in physical memory.

Each PageTable is one PML4 root (what CR3 holds). Entries are the SDM's 64-bit format:
  bit 0 P, bit 1 R/W, bit 2 U/S, bit 63 XD (NX; needs EFER.NXE), bits 59-62 the
  protection key (needs CR4.PKE), bits 12-51 the next table or the frame.

Invariants:
  - Only 4 KiB leaves are created (no PS bit), so a translation is always 4 levels.
  - Upper-level entries are P|RW|US with XD clear: permissions are decided by the leaf
    alone, so a leaf's flags are the whole story for the access rules (oracle.py).
  - Every change to an existing leaf calls `on_change(vaddr)` before returning, so the
    owner can keep the emulated TLB coherent (the machine flushes before the CPU runs).
  - Table frames belong to their PageTable; leaf frames belong to whoever mapped them
    and are never freed here.
  - No table below the root is empty: `unmap` frees a table whose last present entry
    it removed, and then its parent's if that became empty too (never the root). So
    the frames a PageTable holds depend only on what is mapped now, not on what was
    mapped before, and `destroy` frees the rest.
  - A non-present entry is all zero (unmap writes 0), so an empty table is a zero page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NewType

from underbridge.errors import KernelBug
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysAddr, PhysMem

VirtAddr = NewType("VirtAddr", int)

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_NX = 1 << 63
PKEY_SHIFT = 59
PKEY_MASK = 0xF << PKEY_SHIFT
ADDR_MASK = 0x000F_FFFF_FFFF_F000
UPPER_LEVEL_FLAGS = PTE_P | PTE_RW | PTE_US
LEVEL_SHIFTS = (39, 30, 21, 12)
ENTRIES = 512
NUM_PKEYS = 16
_EMPTY_TABLE = bytes(PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class PageFlags:
    """The permission part of a present leaf: what the access rules look at."""

    writable: bool = False
    user: bool = False
    executable: bool = False
    pkey: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pkey < NUM_PKEYS:
            raise ValueError(f"protection key {self.pkey} is not in 0..15")


@dataclass(frozen=True, slots=True)
class Mapping:
    frame: PhysAddr
    flags: PageFlags


def encode_pte(frame: int, flags: PageFlags) -> int:
    """The leaf entry that maps `frame` with `flags` (present)."""
    if frame & ~ADDR_MASK:
        raise ValueError(f"frame {frame:#x} is not a page-aligned physical address")
    entry = frame | PTE_P | (flags.pkey << PKEY_SHIFT)
    if flags.writable:
        entry |= PTE_RW
    if flags.user:
        entry |= PTE_US
    if not flags.executable:
        entry |= PTE_NX
    return entry


def decode_pte(entry: int) -> Mapping | None:
    """The mapping a leaf entry describes, or None when it is not present."""
    if not entry & PTE_P:
        return None
    flags = PageFlags(
        writable=bool(entry & PTE_RW),
        user=bool(entry & PTE_US),
        executable=not entry & PTE_NX,
        pkey=(entry & PKEY_MASK) >> PKEY_SHIFT,
    )
    return Mapping(PhysAddr(entry & ADDR_MASK), flags)


def is_canonical(vaddr: int) -> bool:
    return 0 <= vaddr < (1 << 47) or (1 << 64) - (1 << 47) <= vaddr < (1 << 64)


def _indices(vaddr: int) -> tuple[int, int, int, int]:
    if vaddr % PAGE_SIZE or not is_canonical(vaddr):
        raise ValueError(f"{vaddr:#x} is not a page-aligned canonical virtual address")
    i4, i3, i2, i1 = ((vaddr >> shift) & (ENTRIES - 1) for shift in LEVEL_SHIFTS)
    return i4, i3, i2, i1


class PageTable:
    """One address space's page table: a PML4 root and the tables below it."""

    def __init__(
        self,
        mem: PhysMem,
        frames: FrameAllocator,
        on_change: Callable[[VirtAddr], None] = lambda _va: None,
    ) -> None:
        self._mem = mem
        self._frames = frames
        self._on_change = on_change
        self.root: PhysAddr = frames.alloc()
        # Every table frame, the root first; a dict keeps the order (destroy frees
        # them in it, which keeps frame reuse deterministic) and removes in O(1).
        self._tables: dict[PhysAddr, None] = {self.root: None}

    def also_on_change(self, callback: Callable[[VirtAddr], None]) -> None:
        """Call `callback` too after every change of a leaf (after the machine's own
        callback): a design that copies this table's mappings elsewhere follows them."""
        first = self._on_change

        def both(vaddr: VirtAddr) -> None:
            first(vaddr)
            callback(vaddr)

        self._on_change = both

    @property
    def table_frames(self) -> int:
        """How many frames this page table holds for its own tables, the root included."""
        return len(self._tables)

    # -- the walk -------------------------------------------------------------------

    def _leaf_slot(self, vaddr: int, create: bool) -> int | None:
        """Physical address of the leaf entry for vaddr, creating tables if asked."""
        i4, i3, i2, i1 = _indices(vaddr)
        table = self.root
        for index in (i4, i3, i2):
            slot = table + 8 * index
            entry = self._mem.read_u64(slot)
            if not entry & PTE_P:
                if not create:
                    return None
                child = self._frames.alloc()
                self._tables[child] = None
                entry = child | UPPER_LEVEL_FLAGS
                self._mem.write_u64(slot, entry)
            elif entry & PTE_PS:
                raise KernelBug(f"large page met while walking {vaddr:#x}")
            table = PhysAddr(entry & ADDR_MASK)
        return table + 8 * i1

    def walk(self, vaddr: int) -> list[int]:
        """The entries met translating vaddr, PML4 first; shorter when one is absent."""
        entries: list[int] = []
        table = self.root
        for shift in LEVEL_SHIFTS:
            entry = self._mem.read_u64(table + 8 * ((vaddr >> shift) & (ENTRIES - 1)))
            entries.append(entry)
            if not entry & PTE_P:
                break
            table = PhysAddr(entry & ADDR_MASK)
        return entries

    # -- queries --------------------------------------------------------------------

    def lookup(self, vaddr: int) -> Mapping | None:
        slot = self._leaf_slot(vaddr & ~(PAGE_SIZE - 1), create=False)
        return None if slot is None else decode_pte(self._mem.read_u64(slot))

    def translate(self, vaddr: int) -> PhysAddr | None:
        mapping = self.lookup(vaddr & ~(PAGE_SIZE - 1))
        return None if mapping is None else PhysAddr(mapping.frame + vaddr % PAGE_SIZE)

    def mappings(self) -> Iterator[tuple[VirtAddr, Mapping]]:
        """Every present leaf, in address order (lower half only by construction)."""
        yield from self._mappings_below(self.root, 0, 0)

    def _mappings_below(
        self, table: int, level: int, base: int
    ) -> Iterator[tuple[VirtAddr, Mapping]]:
        for index in range(ENTRIES):
            entry = self._mem.read_u64(table + 8 * index)
            if not entry & PTE_P:
                continue
            vaddr = base | (index << LEVEL_SHIFTS[level])
            if level == 0 and index >= ENTRIES // 2:
                vaddr |= 0xFFFF_0000_0000_0000
            if level == 3:
                mapping = decode_pte(entry)
                assert mapping is not None
                yield VirtAddr(vaddr), mapping
            else:
                yield from self._mappings_below(entry & ADDR_MASK, level + 1, vaddr)

    # -- changes --------------------------------------------------------------------

    def map(self, vaddr: int, frame: PhysAddr, flags: PageFlags) -> None:
        """Map one 4 KiB page. Remapping a present page is a kernel bug: unmap first."""
        slot = self._leaf_slot(vaddr, create=True)
        assert slot is not None
        if self._mem.read_u64(slot) & PTE_P:
            raise KernelBug(f"{vaddr:#x} is already mapped")
        self._mem.write_u64(slot, encode_pte(frame, flags))
        self._on_change(VirtAddr(vaddr))

    def unmap(self, vaddr: int) -> PhysAddr | None:
        """Remove one page's mapping; returns the frame it mapped, if any.

        Tables left empty are freed on the way up (the root stays). The caller's
        `on_change` covers them too: the only translation they held was this page's.
        """
        slots = self._slots_to_leaf(vaddr)
        if slots is None:
            return None
        mapping = decode_pte(self._mem.read_u64(slots[-1]))
        if mapping is None:
            return None
        self._mem.write_u64(slots[-1], 0)
        self._prune(slots)
        self._on_change(VirtAddr(vaddr))
        return mapping.frame

    def _slots_to_leaf(self, vaddr: int) -> list[int] | None:
        """Physical addresses of the four entries translating vaddr, PML4 first, or None
        when a table on the way is absent."""
        slots = []
        table = self.root
        for depth, index in enumerate(_indices(vaddr)):
            slot = table + 8 * index
            slots.append(slot)
            if depth == len(LEVEL_SHIFTS) - 1:
                break
            entry = self._mem.read_u64(slot)
            if not entry & PTE_P:
                return None
            if entry & PTE_PS:
                raise KernelBug(f"large page met while walking {vaddr:#x}")
            table = PhysAddr(entry & ADDR_MASK)
        return slots

    def _prune(self, slots: list[int]) -> None:
        """Free the tables holding slots[1:] that are now empty, deepest first."""
        for level in range(len(slots) - 1, 0, -1):
            table = PhysAddr(slots[level] & ~(PAGE_SIZE - 1))
            if self._mem.view[table : table + PAGE_SIZE].tobytes() != _EMPTY_TABLE:
                return
            self._mem.write_u64(slots[level - 1], 0)
            del self._tables[table]
            self._frames.free(table)

    def protect(self, vaddr: int, flags: PageFlags) -> None:
        """Change a present page's permissions and protection key."""
        slot = self._leaf_slot(vaddr, create=False)
        mapping = None if slot is None else decode_pte(self._mem.read_u64(slot))
        if slot is None or mapping is None:
            raise KernelBug(f"protect of unmapped page {vaddr:#x}")
        self._mem.write_u64(slot, encode_pte(mapping.frame, flags))
        self._on_change(VirtAddr(vaddr))

    def destroy(self) -> None:
        """Free this table's own frames (not the frames it maps)."""
        for table in self._tables:
            self._frames.free(table)
        self._tables.clear()
