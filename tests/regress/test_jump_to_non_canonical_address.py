"""Regression: a guest jumping to a non-canonical address raised ValueError in the kernel.

The CPU raises #GP for the jump; decoding that fault reads the instruction bytes at
RIP, and Machine.read_virtual asked the page table to translate the non-canonical RIP,
which raised ValueError out of Kernel.run (found by `underbridge fuzz`: a mutated
fuzz_syscalls whose code jumped through an overwritten pointer). Fixed in
read_virtual: it stops at a non-canonical address, so the fault is reported with no
instruction bytes and only the guest ends.
"""

import pytest

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine
from underbridge.machine.faults import GENERAL_PROTECTION

SOURCE = r"""
#include "ub.h"
int main(void)
{
    ((void (*)(void))0x00cdd086326ea000UL)();
    return 0;
}
"""


@pytest.mark.parametrize("in_kernel", [False, True])
def test_a_jump_to_a_non_canonical_address_ends_only_the_guest(tmp_path, in_kernel):
    source = tmp_path / "wild_jump.c"
    source.write_text(SOURCE)
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    base = 0x0300_0000 if in_kernel else 0x40_0000
    guest = kernel.spawn(build_program(source, base=base), in_kernel=in_kernel)
    kernel.run()
    assert guest.state is GroupState.FAULTED
    assert guest.fault.vector == GENERAL_PROTECTION
