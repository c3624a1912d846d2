"""A scratch address space on a real machine, for tests that run hand-written code."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from underbridge.guestbuild.asm import assemble
from underbridge.machine.context import CpuContext
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PAGE_SIZE

CODE_VA = 0x40_0000
DATA_VA = 0x60_0000
STACK_TOP = 0x7F_0000

USER_CODE = PageFlags(user=True, executable=True)
USER_RW = PageFlags(user=True, writable=True)


@dataclass
class Scratch:
    machine: Machine
    table: PageTable

    def code(self, source: str, vaddr: int = CODE_VA, flags: PageFlags = USER_CODE) -> int:
        """Assemble `source` at vaddr (one or more fresh pages) and return vaddr."""
        binary = assemble(source, origin=vaddr)
        for offset in range(0, len(binary), PAGE_SIZE):
            self.page(vaddr + offset, flags, binary[offset : offset + PAGE_SIZE])
        self.machine.code_changed(self.table)
        return vaddr

    def page(self, vaddr: int, flags: PageFlags, data: bytes = b"") -> int:
        frame = self.machine.frames.alloc()
        self.machine.mem.write(frame, data)
        self.table.map(vaddr, frame, flags)
        return frame

    def context(self, ring: int = 3, rip: int = CODE_VA, pkru: int = 0) -> CpuContext:
        return self.machine.new_context(
            ring=ring, page_table=self.table, rip=rip, rsp=STACK_TOP, pkru=pkru
        )


@pytest.fixture(scope="module")
def machine() -> Machine:
    return Machine()


@pytest.fixture
def scratch(machine: Machine) -> Scratch:
    table = machine.new_page_table()
    yield Scratch(machine, table)
    machine.destroy_page_table(table)
