"""Regression: a ring-3 ELF with a segment where the initial stack goes raised KernelBug.

The loader accepts any segment below the end of the lower half, and build_image mapped
the stack after the image: a segment at USER_STACK_TOP - 0x2000 made the stack's
PageTable.map raise KernelBug ("already mapped") out of Kernel.spawn (found by
`underbridge fuzz`'s ELF mutator). Fixed in build_image: a segment overlapping the
stack is an ElfError, and nothing stays mapped or allocated.
"""

import pytest

from underbridge.errors import ElfError
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.process_image import USER_STACK_TOP
from underbridge.machine.cpu import Machine

from .elf_edit import P_VADDR, load_offsets, with_field


def test_a_segment_on_the_stack_is_an_elf_error(hello_elf):
    data = hello_elf.read_bytes()
    last = load_offsets(data)[-1]  # read-only data, file offset page aligned
    mutant = with_field(data, last, P_VADDR, USER_STACK_TOP - 0x2000)
    kernel = Kernel(Machine(accounting=False))
    frames = kernel.machine.frames.free_frames
    with pytest.raises(ElfError, match="overlaps the initial stack"):
        kernel.spawn(mutant)
    assert kernel.machine.frames.free_frames == frames
    assert kernel.groups == {}
