"""Physical memory and the frame allocator.

Physical memory is one host buffer handed to Unicorn with `mem_map_ptr` at physical
address 0, so the emulated MMU and this module see the same bytes: Python reads page
tables and copies guest data with `struct` on a memoryview, never through an engine call.

Invariants:
  - Frame 0 is never handed out (a zero physical address always means "no frame").
  - Every frame handed out is zero-filled; a freed frame is not used again until freed
    frames run out of order (LIFO reuse would make stale-pointer bugs quieter).
  - Only the machine and the kernel's memory objects call alloc/free.
"""

from __future__ import annotations

import ctypes
import struct
from collections import deque
from typing import NewType

from unicorn import UC_PROT_ALL, Uc

from underbridge.errors import KernelBug, OutOfMemory

PhysAddr = NewType("PhysAddr", int)

PAGE_SIZE = 4096
PAGE_SHIFT = 12
_U64 = struct.Struct("<Q")


class PhysMem:
    """The machine's RAM: `size` bytes at physical address 0, shared with the emulator."""

    def __init__(self, uc: Uc, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"physical memory size must be a positive multiple of {PAGE_SIZE}")
        self.size = size
        self._buffer = (ctypes.c_ubyte * size)()
        self.view = memoryview(self._buffer).cast("B")
        uc.mem_map_ptr(0, size, UC_PROT_ALL, ctypes.addressof(self._buffer))

    def _check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise KernelBug(f"physical access {addr:#x}+{length:#x} outside RAM")

    def read(self, addr: int, length: int) -> bytes:
        self._check(addr, length)
        return bytes(self.view[addr : addr + length])

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.view[addr : addr + len(data)] = data

    def read_u64(self, addr: int) -> int:
        return _U64.unpack_from(self.view, addr)[0]

    def write_u64(self, addr: int, value: int) -> None:
        _U64.pack_into(self.view, addr, value)

    def zero(self, addr: int, length: int = PAGE_SIZE) -> None:
        self._check(addr, length)
        ctypes.memset(ctypes.addressof(self._buffer) + addr, 0, length)


class FrameAllocator:
    """Hands out zeroed 4 KiB frames of a PhysMem, FIFO reuse of freed frames."""

    def __init__(self, mem: PhysMem) -> None:
        self._mem = mem
        self._next = PAGE_SIZE  # frame 0 stays unused
        self._freed: deque[PhysAddr] = deque()
        self._in_use: set[PhysAddr] = set()

    @property
    def in_use(self) -> int:
        """How many frames are allocated now (what a leak check counts)."""
        return len(self._in_use)

    @property
    def free_frames(self) -> int:
        return (self._mem.size - self._next) // PAGE_SIZE + len(self._freed)

    def alloc(self) -> PhysAddr:
        if self._next < self._mem.size:
            frame = PhysAddr(self._next)
            self._next += PAGE_SIZE
        elif self._freed:
            frame = self._freed.popleft()
        else:
            raise OutOfMemory(f"all {self._mem.size // PAGE_SIZE} physical frames are in use")
        self._mem.zero(frame)
        self._in_use.add(frame)
        return frame

    def free(self, frame: PhysAddr) -> None:
        if frame not in self._in_use:
            raise KernelBug(f"freeing frame {frame:#x} that is not allocated")
        self._in_use.remove(frame)
        self._freed.append(frame)
