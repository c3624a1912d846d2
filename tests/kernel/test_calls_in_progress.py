"""A fault inside a server's handler ends that server only; its callers get -EPIPE.

Under the UnderBridge placement a call runs the server's handler on the caller's thread
(thread migration), so a fault there is the server's, not the thread owner's. These
tests make a server's handler fault (guest/attacks/faulty_server.c reads an unmapped
address) while a call is in progress, directly and inside a nested gate call
(tests/guests/relay.c forwards each call), from an application (the kernel calls the
gate for it) and from an in-kernel client (which calls the gate itself).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine
from underbridge.machine.oracle import Access, Violation

GUESTS = Path(__file__).parent.parent / "guests"
FAULTY_BASE, RELAY_BASE, CLIENT_BASE, APP_BASE = 0x0300_0000, 0x0400_0000, 0x0500_0000, 0x40_0000
UNMAPPED = 0x10


def start(kernel: Kernel, source: Path, base: int, argv: list[str], *, in_kernel: bool = True):
    return kernel.spawn(build_program(source, base=base), argv, name=argv[0], in_kernel=in_kernel)


def faulty(kernel: Kernel):
    server = start(
        kernel,
        guest_root() / "attacks" / "faulty_server.c",
        FAULTY_BASE,
        ["faulty_server", hex(UNMAPPED)],
    )
    kernel.run(until=lambda: "attacker" in kernel.services)
    return server


def lines(group) -> list[str]:
    return bytes(group.console).decode().splitlines()


def assert_faulted_reading_unmapped(server) -> None:
    assert server.state is GroupState.FAULTED
    fault = server.fault
    assert (fault.mnemonic, fault.reason, fault.access, fault.address, fault.cpl) == (
        "#PF",
        Violation.NOT_PRESENT,
        Access.READ,
        UNMAPPED,
        0,
    )


@pytest.mark.parametrize("in_kernel", [False, True], ids=["application", "in-kernel-client"])
def test_a_fault_in_a_nested_call_ends_the_innermost_server_and_the_relay_goes_on(in_kernel):
    kernel = Kernel(Machine(), ipc="underbridge")
    server = faulty(kernel)
    relay = start(kernel, GUESTS / "relay.c", RELAY_BASE, ["relay", "attacker"])
    client = start(
        kernel,
        GUESTS / "relay_client.c",
        CLIENT_BASE if in_kernel else APP_BASE,
        ["relay_client", "2"],
        in_kernel=in_kernel,
    )
    kernel.run(until=lambda: not client.running)
    assert_faulted_reading_unmapped(server)
    assert relay.running
    # the relay's forwarded call got -EPIPE (-32), the second one from the dead server's
    # tombstone; the client's own calls to the relay succeeded
    assert lines(client) == ["call = 0 mr0 = -32", "call = 0 mr0 = -32"]
    assert client.state is GroupState.EXITED and client.exit_status == 0


@pytest.mark.parametrize("in_kernel", [False, True], ids=["application", "in-kernel-client"])
def test_a_fault_in_the_handler_ends_the_server_and_the_call_returns_epipe(in_kernel):
    kernel = Kernel(Machine(), ipc="underbridge")
    server = faulty(kernel)
    client = start(
        kernel,
        GUESTS / "relay_client.c",
        CLIENT_BASE if in_kernel else APP_BASE,
        ["relay_client", "2", "attacker"],
        in_kernel=in_kernel,
    )
    kernel.run(until=lambda: not client.running)
    assert_faulted_reading_unmapped(server)
    first, second = lines(client)
    assert first == "call = -32 mr0 = 0"
    assert second.startswith("call = -")  # the connection is gone: a clean error
    assert client.state is GroupState.EXITED and client.exit_status == 0


def test_the_faulting_servers_gates_and_keys_are_all_given_back():
    machine = Machine()
    kernel = Kernel(machine, ipc="underbridge")
    server = faulty(kernel)
    client = start(
        kernel, GUESTS / "relay_client.c", CLIENT_BASE, ["relay_client", "1", "attacker"]
    )
    kernel.run(until=lambda: not client.running)
    assert not server.running and not client.running
    assert kernel.ipc.gates() == [] and kernel.placement.placed_groups() == []
    assert kernel.ipc.keys.available == 15
