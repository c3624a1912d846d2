"""Physical memory and the frame allocator."""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from underbridge.errors import KernelBug, OutOfMemory
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysMem


@pytest.fixture
def frames():
    return FrameAllocator(PhysMem(Uc(UC_ARCH_X86, UC_MODE_64), 8 * PAGE_SIZE))


def test_frames_are_zeroed_nonzero_and_distinct(frames):
    mem = frames._mem
    first = frames.alloc()
    mem.write(first, b"\xff" * PAGE_SIZE)
    frames.free(first)
    handed = [frames.alloc() for _ in range(7)]
    assert 0 not in handed and len(set(handed)) == 7
    assert all(mem.read(f, PAGE_SIZE) == bytes(PAGE_SIZE) for f in handed)


def test_exhaustion_and_double_free(frames):
    handed = [frames.alloc() for _ in range(7)]
    with pytest.raises(OutOfMemory):
        frames.alloc()
    frames.free(handed[0])
    with pytest.raises(KernelBug):
        frames.free(handed[0])
    assert frames.alloc() == handed[0]


def test_out_of_range_physical_access_is_a_kernel_bug(frames):
    with pytest.raises(KernelBug):
        frames._mem.read(8 * PAGE_SIZE - 4, 8)
