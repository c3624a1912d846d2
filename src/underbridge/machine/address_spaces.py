"""The machine's page tables: the registry of live ones, and the emulated TLB's coherence.

Every page table a context may run on is made here and registered by the physical
address of its root (its CR3 value): the run loop looks a context's CR3 up and refuses
an unknown one (KernelBug), and fault decoding reads code through the running table.

`AddressSpaces` is a base class of Machine, not a member: the run loop's `_load` reads
the registry, `_tlb_stale` and `_space` on every run, and `_flush_tlb` on every CR3
switch, without an extra attribute lookup.

Invariants:
  - Before the CPU runs, the emulated TLB is coherent with every page table: any page
    table change (each table calls `_page_changed`), table destruction, CR3 change or
    PKRU change since the last run triggers a full flush (`_load` in cpu.py).
  - Code written into frames is dropped from the engine's translations and from the
    block decoder's cache only through `code_changed`.
  - The kernel page table is never destroyed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_OK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

from underbridge.errors import KernelBug
from underbridge.machine.paging import PageTable, VirtAddr, is_canonical
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysMem

if TYPE_CHECKING:
    from underbridge.machine.accounting import Accounting

_TLB_FLUSH = (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH  # uc_ctl's code, no arguments
_uc_ctl = uclib.uc_ctl


class AddressSpaces:
    """Machine's page-table registry and TLB. The Machine sets these attributes."""

    uc: Uc
    _uch: int  # the engine handle
    mem: PhysMem
    frames: FrameAllocator
    kernel_space: PageTable
    _page_tables: dict[int, PageTable]  # by root (CR3)
    _tlb_stale: bool  # a page table changed since the last flush
    _space: PageTable | None  # the page table of the running context
    _decoder: Accounting | None  # caches decoded blocks per page table

    def new_page_table(self) -> PageTable:
        """An empty page table (the kernel's pages are mapped in kernel_space only)."""
        table = PageTable(self.mem, self.frames, self._page_changed)
        self._page_tables[table.root] = table
        return table

    def page_table(self, root: int) -> PageTable:
        """The live page table rooted at `root` (a context's CR3)."""
        return self._page_tables[root]

    def destroy_page_table(self, table: PageTable) -> None:
        if table is self.kernel_space:
            raise KernelBug("the kernel page table is never destroyed")
        del self._page_tables[table.root]
        if self._decoder is not None:
            self._decoder.forget_space(table.root)
        table.destroy()
        self._tlb_stale = True

    def _page_changed(self, _vaddr: VirtAddr) -> None:
        self._tlb_stale = True

    def code_changed(self, table: PageTable) -> None:
        """Call after writing instructions into frames: drop translated and decoded code."""
        self.uc.ctl_flush_tb()
        if self._decoder is not None:
            self._decoder.forget_space(table.root)

    def read_virtual(self, table: PageTable, vaddr: int, length: int) -> bytes:
        """Bytes at vaddr as `table` maps them, cut short at the first unmapped page (or
        non-canonical address: a guest that jumped there gets #GP, reported from here)."""
        out = bytearray()
        while len(out) < length and is_canonical(vaddr + len(out)):
            physical = table.translate(vaddr + len(out))
            if physical is None:
                break
            chunk = min(length - len(out), PAGE_SIZE - physical % PAGE_SIZE)
            out += self.mem.read(physical, chunk)
        return bytes(out)

    def _read_running_code(self, vaddr: int, length: int) -> bytes:
        space = self._space or self.kernel_space
        return self.read_virtual(space, vaddr, length)

    def _flush_tlb(self) -> None:
        # uc_ctl called directly: the binding's ctl() wrapper costs more than the flush.
        status = _uc_ctl(self._uch, _TLB_FLUSH)
        if status != UC_ERR_OK:
            raise UcError(status)
        self._tlb_stale = False
