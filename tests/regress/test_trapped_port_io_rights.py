"""Regression: a trapped port access used the rights of the thread's own cap group.

An in-kernel client S granted port 2 calls server R, which holds no port; R's handler,
running on S's thread (thread migration), executes `out dx, al` on port 2. The secure
monitor traps it and the kernel emulated it because S, the thread's owner, holds the
port: R wrote S's port. The rights are now those of the code's owner, R, which is
denied and ended for it; S's call returns -EPIPE and S's port saw nothing.
"""

from __future__ import annotations

from pathlib import Path

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"


def test_a_handler_cannot_use_its_callers_ports():
    kernel = Kernel(Machine(), ipc="underbridge")
    server = kernel.spawn(
        build_program(GUESTS / "port_handler.c", base=0x0300_0000),
        ["port_handler"],
        in_kernel=True,
        rewrite=False,
    )
    kernel.run(until=lambda: "ports" in kernel.services)
    # relay_client calls {1, 2, 3, 4}: port mr[1] = 2, value mr[2] = 3
    client = kernel.spawn(
        build_program(GUESTS / "relay_client.c", base=0x0500_0000),
        ["relay_client", "1", "ports"],
        in_kernel=True,
        io_ports=range(2, 3),
    )
    kernel.run(until=lambda: not client.running)
    assert server.state is GroupState.FAULTED
    assert server.fault.mnemonic == "VMEXIT" and server.fault.instruction == "out dx, al"
    assert client.port_writes == [] and server.port_writes == []
    assert bytes(client.console).decode() == "call = -32 mr0 = 0\n"
    assert client.exit_status == 0
