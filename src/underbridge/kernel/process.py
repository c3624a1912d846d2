"""Processes: an address space built from an ELF image, a stack with argv, one thread.

Invariants:
  - A process owns every frame in `frames` and frees them when destroyed.
  - A process either owns its page table (ring-3 processes, the usual case) or shares
    one (ring-0 guests sharing a domain page table); then it unmaps exactly the pages
    it mapped, listed in `pages`, and leaves the table alive.
  - The initial stack follows the SysV layout crt0 expects: RSP -> argc, argv[0..n-1],
    NULL, with the argument strings above it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from underbridge.errors import UserError
from underbridge.kernel.loader import ElfImage, map_image
from underbridge.machine.context import CpuContext
from underbridge.machine.cpu import Machine
from underbridge.machine.faults import Fault
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

USER_STACK_TOP = 0x7FFF_FFFF_0000
STACK_PAGES = 16
MAX_ARGV_BYTES = 8 * PAGE_SIZE


class State(Enum):
    RUNNABLE = "runnable"
    EXITED = "exited"
    FAULTED = "faulted"


@dataclass(slots=True, eq=False)
class Process:
    pid: int
    name: str
    table: PageTable
    owns_table: bool
    context: CpuContext
    frames: list[PhysAddr]
    pages: list[int]
    state: State = State.RUNNABLE
    exit_status: int | None = None
    fault: Fault | None = None
    console: bytearray = field(default_factory=bytearray)

    @property
    def alive(self) -> bool:
        return self.state is State.RUNNABLE


def initial_stack(argv: list[str], top: int) -> tuple[bytes, int]:
    """The bytes of the initial stack ending at `top`, and the RSP pointing into them."""
    strings = b""
    offsets = []
    for arg in argv:
        offsets.append(len(strings))
        strings += arg.encode() + b"\0"
    strings_at = (top - len(strings)) & ~0xF
    vector = struct.pack(f"<Q{len(argv)}QQ", len(argv),
                         *(strings_at + off for off in offsets), 0)
    rsp = (strings_at - len(vector)) & ~0xF
    image = vector + b"\0" * (strings_at - rsp - len(vector)) + strings
    image += b"\0" * (top - rsp - len(image))
    return image, rsp


def create_process(machine: Machine, pid: int, name: str, image: ElfImage, argv: list[str], *,
                   ring: int = 3, table: PageTable | None = None, pkey: int = 0,
                   pkru: int = 0, stack_top: int = USER_STACK_TOP) -> Process:
    """Build a process's memory and first thread; nothing runs yet."""
    if sum(len(arg) + 1 for arg in argv) > MAX_ARGV_BYTES:
        raise UserError(f"{name}: arguments exceed {MAX_ARGV_BYTES} bytes")
    owns_table = table is None
    space = machine.new_page_table() if table is None else table
    frames = map_image(machine, space, image, pkey=pkey)
    pages = [page for seg in image.segments
             for page in range(seg.vaddr & ~(PAGE_SIZE - 1), seg.end, PAGE_SIZE)]
    stack_bytes, rsp = initial_stack(argv, stack_top)
    stack_flags = PageFlags(writable=True, user=True, pkey=pkey)
    for index in range(STACK_PAGES):
        page = stack_top - (index + 1) * PAGE_SIZE
        frame = machine.frames.alloc()
        chunk_start = len(stack_bytes) - (index + 1) * PAGE_SIZE
        chunk = stack_bytes[max(chunk_start, 0) : len(stack_bytes) - index * PAGE_SIZE]
        machine.mem.write(frame + PAGE_SIZE - len(chunk), chunk)
        space.map(page, frame, stack_flags)
        frames.append(frame)
        pages.append(page)
    context = machine.new_context(ring=ring, page_table=space, rip=image.entry, rsp=rsp,
                                  pkru=pkru)
    return Process(pid, name, space, owns_table, context, frames, pages)


def destroy_process(machine: Machine, process: Process) -> None:
    """Give back everything the process held (its page table too, if it owned it)."""
    if process.owns_table:
        machine.destroy_page_table(process.table)
    else:
        for page in process.pages:
            process.table.unmap(page)
    for frame in process.frames:
        machine.frames.free(frame)
    process.frames.clear()
    process.pages.clear()
