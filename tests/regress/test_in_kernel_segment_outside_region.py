"""Regression: an in-kernel ELF could map a segment anywhere on the kernel page table.

admit checked only the first segment's address (the region's base); the other segments
of a mutated ELF were mapped on the kernel page table wherever they said, under the new
domain's key: in the gate window, the control window, or another server's region.
A later connect then hit KernelBug ("already mapped") on its gate page, or a server
was placed over those pages (found by `underbridge fuzz`'s ELF mutator). Fixed in
UnderbridgeIpc.admit: every segment must lie in the lower half of the region, else
UserError, before any protection key is taken.
"""

import pytest

from underbridge.bench.ipc import ECHO_BASE
from underbridge.errors import UserError
from underbridge.kernel.ipc.underbridge import CONTROL_WINDOW, GATE_WINDOW, REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine
from underbridge.toolchain import build_program

from .elf_edit import P_VADDR, load_offsets, with_field

BASE = 0x0300_0000


@pytest.mark.parametrize("where", [GATE_WINDOW + 0x1000, CONTROL_WINDOW + 0x1000,
                                   ECHO_BASE + REGION_SIZE, BASE + REGION_SIZE // 2])
def test_a_segment_outside_the_region_is_refused(where):
    data = build_program("hello", base=BASE).read_bytes()
    mutant = with_field(data, load_offsets(data)[-1], P_VADDR, where)
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    with pytest.raises(UserError, match="lower half of its kernel-space region"):
        kernel.spawn(mutant, in_kernel=True)
    assert kernel.machine.kernel_space.lookup(where) is None
    assert kernel.ipc.keys.owners == {}
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    assert echo.running
