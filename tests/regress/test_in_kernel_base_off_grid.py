"""Regression: Kernel.spawn let ValueError escape for an in-kernel ELF off the region grid.

An in-kernel server's first segment must be at a 16 MiB-aligned base below the gate
window; UnderbridgeIpc.admit raised ValueError for any other, and Kernel.spawn let it
through (found by `underbridge fuzz`'s ELF mutator; also issue 10 item 5). Fixed in
Kernel.spawn: a UserError naming the rule, and with if_unsafe="user" the program runs
in user space instead, like any other program that cannot be placed in the kernel.
"""

import pytest

from underbridge.errors import UserError
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine


def test_a_base_off_the_grid_is_a_user_error(hello_elf):  # hello is linked at 0x400000
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    with pytest.raises(UserError, match=r"in-kernel servers are linked at .*aligned bases"):
        kernel.spawn(hello_elf, in_kernel=True)
    assert kernel.groups == {} and kernel.ipc.keys.owners == {}
    fallback = kernel.spawn(hello_elf, in_kernel=True, if_unsafe="user")
    kernel.run()
    assert fallback.state is GroupState.EXITED and fallback.threads[0].context.cpl == 3
