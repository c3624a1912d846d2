"""Regression: Kernel.spawn let SyscallError(ENOKEY) escape when no protection key was left.

There are 15 keys for domains; the 16th in-kernel server made UnderbridgeIpc.admit
raise SyscallError, which is the guest-facing error type, out of Kernel.spawn (issue 10
item 5; the fuzzer's in-kernel connects run keys out the same way). Fixed in
Kernel.spawn: a UserError naming the holders of the keys.
"""

import pytest

from underbridge.errors import UserError
from underbridge.kernel.ipc.underbridge import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine
from underbridge.toolchain import build_program


def test_the_sixteenth_in_kernel_server_is_a_user_error():
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    for index in range(15):
        base = REGION_SIZE * (index + 1)
        kernel.spawn(build_program("hello", base=base), [f"hello{index}"], in_kernel=True)
    with pytest.raises(UserError, match="no protection key left"):
        kernel.spawn(build_program("hello", base=REGION_SIZE * 16), in_kernel=True)
    assert len(kernel.groups) == 15
