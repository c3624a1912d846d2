"""Regression: two in-kernel servers linked at the same 16 MiB region.

The second spawn raised KernelBug ("... is already mapped") from the page table, a
traceback through the API. The UnderBridge design now refuses it before it takes a key:
a one-line UserError naming the region's owner, and the first server is untouched.
"""

from __future__ import annotations

import pytest

from underbridge.bench.ipc import ECHO_BASE
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine


def test_a_second_server_in_a_taken_region_is_refused_cleanly():
    kernel = Kernel(Machine(), ipc="underbridge")
    echo = build_program("echo", base=ECHO_BASE)
    first = kernel.spawn(echo, ["echo"], in_kernel=True)
    keys = kernel.ipc.keys.available
    frames = kernel.machine.frames.free_frames
    with pytest.raises(UserError, match=r"the region of echo, which is in kernel space") as err:
        kernel.spawn(echo, ["echo", "echo2"], name="echo2", in_kernel=True)
    assert "\n" not in err.value.args[0]
    assert kernel.ipc.keys.available == keys and kernel.machine.frames.free_frames == frames
    kernel.run(until=lambda: "echo" in kernel.services)
    assert first.running and kernel.placement.placed_groups() == [first]
