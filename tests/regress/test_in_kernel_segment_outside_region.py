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
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import CONTROL_WINDOW, GATE_WINDOW, REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

from .elf_edit import P_MEMSZ, P_VADDR, load_offsets, with_field

BASE = 0x0300_0000


@pytest.mark.parametrize(
    "where",
    [
        GATE_WINDOW + 0x1000,
        CONTROL_WINDOW + 0x1000,
        ECHO_BASE + REGION_SIZE,
        BASE + REGION_SIZE // 2,
    ],
)
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


def test_a_huge_code_segment_is_refused_before_the_rewriter_sweeps_it():
    """A 32 MiB executable memsz (3 KiB of file bytes) made the rewriter decode 32 MiB of
    zeros, taking gigabytes of host memory (found by the fuzzer's large run); the extent
    is now checked before rewriting (the code-size limit refuses it first)."""
    data = build_program("hello", base=BASE).read_bytes()
    last = load_offsets(data)[-1]
    mutant = bytearray(with_field(data, last, P_MEMSZ, 0x0200_0C8C))
    mutant[last + 4] = 5  # p_flags: R+X, so the rewriter would sweep all of it
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    with pytest.raises(UserError, match="more than the 4 MiB a server in kernel space may have"):
        kernel.spawn(bytes(mutant), in_kernel=True)
    assert kernel.ipc.keys.owners == {}
