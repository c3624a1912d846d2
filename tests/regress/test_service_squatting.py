"""Regression: while a supervised server was down between its death and its restart,
any program could register its service name, and every client that reconnected by name
(ub_ipc_call_retry) sent it its calls and buffers. A supervised server's name is now
held for it (Supervisor.holder, checked by IPC_REGISTER): nobody else may take it."""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.supervisor import Policy, Supervisor
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_nobody_takes_a_supervised_servers_name_while_it_is_down(mode):
    kernel = Kernel(Machine(), ipc=mode)
    supervisor = Supervisor(kernel)
    supervisor.start(
        build_program("echo", base=0x0100_0000),
        ["echo"],
        service="echo",
        in_kernel=kernel.ipc.traits.servers_in_kernel,
        policy=Policy(backoff=200_000),  # a long window with no echo
    )
    kernel.run(until=lambda: "echo" in kernel.services)
    client = kernel.spawn(
        build_program(GUESTS / "retry_client.c", base=0x0200_0000), ["retry_client", "300"]
    )
    squatter = kernel.spawn(
        build_program(GUESTS / "squatter.c", base=0x0300_0000), ["squatter", "echo"]
    )
    supervisor.kill_at("echo", kernel.machine.clock() + 30_000)
    kernel.run(until=lambda: not client.running)

    assert client.state is GroupState.EXITED and client.exit_status == 0
    lines = bytes(client.console).decode().splitlines()
    assert len(lines) == 1  # the one call that reconnected, to echo restarted
    _, call, _, status, mr1, *_ = lines[0].split()  # "call I = STATUS MR1 at CLOCK"
    assert status == "0" and mr1 == call  # echo's answer, not the squatter's 0x666
    assert bytes(squatter.console) == b"squatter: refused -1\n"  # EPERM
    assert kernel.services["echo"].server is supervisor.group("echo")
