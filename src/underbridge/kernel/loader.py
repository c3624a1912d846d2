"""The ELF loader: places a parsed image's segments in an address space.

Parsing and its invariants live in underbridge.elf.image (`parse_elf`, `ElfImage`); this
module only maps. Who may call: image_pages, kernel.process_image (it builds a process
image); map_image, tools and tests that map an image straight into a page table.

Invariant: every page of an image gets a fresh frame holding exactly its bytes (zeros
past a segment's file bytes) and the segment's flags; code is never writable, since
parse_elf refuses a writable and executable segment.
"""

from __future__ import annotations

from collections.abc import Iterator

from underbridge.elf.image import PAGE_SIZE, ElfImage, Segment, page_down, page_up
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PhysAddr


def image_pages(machine: Machine, image: ElfImage) -> Iterator[tuple[int, PhysAddr, PageFlags]]:
    """(vaddr, fresh frame holding the page's bytes, flags) for every page of the image.

    Code pages are read-execute, data pages read-only or read-write (never W+X, as
    parse_elf guarantees). The frames belong to the caller.
    """
    for segment in image.segments:
        flags = PageFlags(writable=segment.writable, user=True, executable=segment.executable)
        for page in range(page_down(segment.vaddr), page_up(segment.end), PAGE_SIZE):
            frame = machine.frames.alloc()
            _copy_segment_bytes(machine, frame, page, segment)
            yield page, frame, flags


def map_image(
    machine: Machine, table: PageTable, image: ElfImage, *, pkey: int = 0
) -> list[PhysAddr]:
    """Map every page of `image` into `table` tagged with `pkey`; returns the frames."""
    frames: list[PhysAddr] = []
    for vaddr, frame, flags in image_pages(machine, image):
        table.map(vaddr, frame, PageFlags(flags.writable, True, flags.executable, pkey))
        frames.append(frame)
    machine.code_changed(table)
    return frames


def _copy_segment_bytes(machine: Machine, frame: PhysAddr, page: int, segment: Segment) -> None:
    start = max(page, segment.vaddr)
    end = min(page + PAGE_SIZE, segment.vaddr + len(segment.data))
    if start < end:
        offset = start - segment.vaddr
        machine.mem.write(frame + (start - page), segment.data[offset : offset + end - start])
