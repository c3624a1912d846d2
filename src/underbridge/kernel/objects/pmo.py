"""Physical memory objects: page frames a cap group can map, and share by granting the cap.

Invariants:
  - The PMO owns its frames and frees them exactly once, when destroyed.
  - Destroying a PMO first unmaps it from every address space that maps it, so no page
    table ever points at a freed frame, and revokes every cap to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import ObjType
from underbridge.kernel.objects.base import KernelObject
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysAddr

if TYPE_CHECKING:
    from underbridge.kernel.objects.vmspace import VmSpace

MAX_PMO_BYTES = 16 << 20


class Pmo(KernelObject):
    obj_type = ObjType.PMO

    def __init__(self, frames: FrameAllocator, size: int) -> None:
        super().__init__()
        self._allocator = frames
        pages = -(-size // PAGE_SIZE)
        self.frames: list[PhysAddr] = []
        try:
            for _ in range(pages):
                self.frames.append(frames.alloc())
        except Exception:
            self._free_frames()
            raise
        self.mappings: list[tuple[VmSpace, int]] = []

    @property
    def size(self) -> int:
        return len(self.frames) * PAGE_SIZE

    def destroy(self) -> None:
        if not self.alive:
            return
        self.mark_destroyed()
        for space, vaddr in list(self.mappings):
            space.unmap_pmo(vaddr)
        self._free_frames()

    def _free_frames(self) -> None:
        for frame in self.frames:
            self._allocator.free(frame)
        self.frames.clear()
