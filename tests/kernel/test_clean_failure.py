"""Clean failure: when a server dies, its clients' calls return -EPIPE, in every design.

Every design and both paths (an application client; a server client, in kernel space
under the designs that place servers there). The server (tests/guests/stuck_server.c)
answers one call, then dies in the second, which is in progress: its handler faults,
or it spins and is killed (the supervisor, with a policy that never restarts), or, for
the kernel's own gate calls for applications, it spins until the kernel's budget for a
handler is spent (upcall.MAX_SLICES). The client (tests/guests/failing_client.c) must
see -EPIPE for that call and for the next one on the same connection, keep its shared
buffer mapped until it closes the connection, and close it cleanly.

The one exception is the design that isolates nothing: under `monolithic` an in-kernel
client that is inside the dead server's handler ends with it (kernel/ipc/monolithic.py,
Faults): nothing recorded its call, so nothing can unwind it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc import upcall
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.supervisor import Policy, Supervisor
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"
SERVER_BASE, CLIENT_BASE = 0x0100_0000, 0x0200_0000
SPIN, FAULT = 1, 2
EPIPE = -32
EXPECTED = ["first = 0 7", f"failed = {EPIPE}", f"next = {EPIPE}", "buffer = ok", "close = 0"]
PATHS = ["app-server", "server-server"]


def setup(mode: str, op: int, path: str, client_args: tuple[()] | None = ()):
    """A kernel with the stuck server under a supervisor that never restarts it, and
    (unless client_args is None) failing_client calling it."""
    kernel = Kernel(Machine(), ipc=mode)
    supervisor = Supervisor(kernel)
    in_kernel = kernel.ipc.traits.servers_in_kernel
    server = supervisor.start(
        build_program(GUESTS / "stuck_server.c", base=SERVER_BASE),
        ["stuck_server"],
        service="stuck",
        in_kernel=in_kernel,
        policy=Policy(limit=0),  # it stays dead
    )
    kernel.run(until=lambda: "stuck" in kernel.services)
    client = None if client_args is None else spawn_client(kernel, op, path, "stuck")
    return kernel, supervisor, server, client


def spawn_client(kernel: Kernel, op: int, path: str, service: str):
    as_server = path == "server-server"
    args = ["failing_client", str(op), service] + (["--as-server"] if as_server else [])
    return kernel.spawn(
        build_program(GUESTS / "failing_client.c", base=CLIENT_BASE),
        args,
        in_kernel=kernel.ipc.traits.servers_in_kernel and as_server,
    )


def lines(group) -> list[str]:
    return bytes(group.console).decode().splitlines()


def kernel_calls_for_applications(kernel: Kernel, path: str) -> bool:
    """Does the kernel run the server's handler itself, to completion (upcall.py)?"""
    return path == "app-server" and kernel.ipc.name in ("underbridge", "monolithic")


def assert_clean(kernel: Kernel, server, client) -> None:
    assert not server.running and client.state is GroupState.EXITED, (client.fault, lines(client))
    assert lines(client) == EXPECTED
    assert client.exit_status == 0
    assert "stuck" not in kernel.services


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", DESIGNS)
def test_a_fault_in_the_handler_fails_the_call_in_progress_and_later_ones(mode, path):
    kernel, supervisor, server, client = setup(mode, FAULT, path)
    kernel.run(until=lambda: not client.running)
    if (mode, path) == ("monolithic", "server-server"):
        # the fault is blamed on the code's owner, but the client was inside it: no
        # containment in this design
        assert server.state is GroupState.FAULTED and not client.running
        return
    assert server.state is GroupState.FAULTED and server.fault.address == 0x10
    assert_clean(kernel, server, client)
    [restart] = supervisor.restarts
    assert restart.gave_up == "restart limit 0 reached"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", DESIGNS)
def test_a_kill_during_the_handler_fails_the_call_in_progress_and_later_ones(
    mode, path, monkeypatch
):
    kernel, supervisor, server, client = setup(mode, SPIN, path)
    if kernel_calls_for_applications(kernel, path):
        # The kernel's gate call runs to completion: it is the kernel's budget for a
        # handler that ends it (a spent budget), after MAX_SLICES slices.
        monkeypatch.setattr(upcall, "MAX_SLICES", 3)
        kernel.run(until=lambda: not client.running)
        assert server.state is GroupState.EXITED and server.exit_status == -9
        assert_clean(kernel, server, client)
        return
    kernel.run(until=lambda: "first = 0 7" in lines(client))
    start = kernel.machine.clock()
    kernel.run(until=lambda: kernel.machine.clock() > start + 100_000)  # well inside it
    assert lines(client) == ["first = 0 7"] and client.running
    supervisor.kill_now("stuck_server")
    kernel.run(until=lambda: not client.running)
    if (mode, path) == ("monolithic", "server-server"):
        assert client.state is GroupState.FAULTED  # it was running the dead handler
        return
    assert_clean(kernel, server, client)


RELAY_BASE = 0x0300_0000


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", DESIGNS)
def test_a_server_killed_while_its_handler_is_in_a_call_of_its_own(mode, path, monkeypatch):
    """The relay forwards the client's call to the stuck server, whose handler spins; the
    relay is killed meanwhile (in kernel space: a gate call running inside the dead
    server's handler, on the client's thread). The client's call returns -EPIPE, and
    the stuck server, which did nothing wrong, lives on."""
    kernel, supervisor, stuck, _ = setup(mode, SPIN, path, client_args=None)
    monkeypatch.setattr(upcall, "MAX_SLICES", 3)  # monolithic: the budget ends it
    if (mode, path) == ("monolithic", "server-server"):
        pytest.skip(
            "no containment: nothing records the call; the thread goes on in the stuck handler"
        )
    relay = supervisor.start(
        build_program(GUESTS / "relay.c", base=RELAY_BASE),
        ["relay", "stuck"],
        service="relay",
        in_kernel=kernel.ipc.traits.servers_in_kernel,
        policy=Policy(limit=0),
    )
    client = spawn_client(kernel, SPIN, path, "relay")
    kernel.run(until=lambda: "first = 0 0" in lines(client))
    instant = kernel.machine.clock() + 100_000  # the second call is spinning by then
    supervisor.kill_at("relay", instant)
    kernel.run(until=lambda: not client.running)
    assert instant <= supervisor.restarts[0].died_at < instant + 1_000
    assert not relay.running and client.state is GroupState.EXITED, client.fault
    assert lines(client) == ["first = 0 0", *EXPECTED[1:]]
    if mode == "monolithic":
        # Nothing recorded the call: the kernel's call went on in stuck's handler until
        # its budget was spent, and stuck, whose code it was, was ended for it.
        assert stuck.state is GroupState.EXITED and stuck.exit_status == -9
        return
    assert stuck.running and "stuck" in kernel.services


@pytest.mark.parametrize("mode", ["underbridge", "monolithic"])
def test_a_kill_at_an_instant_lands_inside_the_kernels_gate_call(mode):
    """The kernel runs an application's call to an in-kernel server to its end, but a
    supervisor's kill_at still lands inside it, at its instant (not after the kernel's
    budget for the handler), and the call returns -EPIPE."""
    kernel, supervisor, server, client = setup(mode, SPIN, "app-server")
    kernel.run(until=lambda: "first = 0 7" in lines(client))
    instant = kernel.machine.clock() + 100_000
    supervisor.kill_at("stuck_server", instant)
    kernel.run(until=lambda: not client.running)
    assert_clean(kernel, server, client)
    [restart] = supervisor.restarts
    assert instant <= restart.died_at < instant + 1_000  # the handler was spinning then
