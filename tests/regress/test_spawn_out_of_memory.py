"""Regression: Kernel.spawn let OutOfMemory escape for an image larger than RAM.

A .bss of 100 MiB (p_memsz, within the loader's 256 MiB cap) needs more frames than
the 64 MiB machine has; build_image's frame allocation raised OutOfMemory out of
Kernel.spawn (found by `underbridge fuzz`'s ELF mutator; also issue 10 item 5). Fixed
in Kernel.spawn: a UserError saying the program does not fit, every frame given back.
"""

import pytest

from underbridge.errors import UserError
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

from .elf_edit import P_MEMSZ, load_offsets, with_field


def test_an_image_larger_than_memory_is_a_user_error(hello_elf):
    data = hello_elf.read_bytes()
    mutant = with_field(data, load_offsets(data)[-1], P_MEMSZ, 100 << 20)
    kernel = Kernel(Machine(accounting=False))
    free = kernel.machine.frames.free_frames
    with pytest.raises(UserError, match="not enough physical memory to load"):
        kernel.spawn(mutant)
    assert kernel.machine.frames.free_frames == free
    child = kernel.spawn(hello_elf)  # the machine is as good as new
    kernel.run()
    assert child.exit_status == 0
