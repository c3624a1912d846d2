"""Regression: a client crashed its server by closing a connection during a call.

A client's second thread closed the connection (CAP_DELETE), or the client ended, while
the server was still serving the first thread's call on it: the kernel destroyed the
shared buffer at once, unmapping it from the server too, and the server's handler, still
working on it, faulted (#PF: page not present) and the server died (README, known
limits: "the mirror case"; `bench crash` under sel4 saw 190 ramdisk faults of this
kind). A client could crash a server at will. Fixed (kernel/orphans.py): the buffer
leaves the client at once and the server when its call is over (its next REPLY_WAIT).

The server (tests/guests/slow_server.c) marks the buffer, works for several slices,
then uses the buffer again and answers what it reads there; the client
(tests/guests/closing_client.c) closes the connection (or exits) from its second thread
once the mark is there. Every design, both paths, and the server in user space too
under the designs that place servers in kernel space. The server must live and serve
the next client; the closing client ends cleanly, its call answered (a user-space
server's reply reaches a caller still blocked in its call), or failed with -EPIPE (the
designs whose handler runs on the caller's thread end a call in progress on a closed
connection before its pages go: gates, trampolines; Zircon closes the channel), or
finished before the close (the kernel's own gate call for an application runs to its
end before the application's other thread runs again).

The one exception is the design that isolates nothing: under `monolithic` an in-kernel
client's thread inside the server's handler (nothing records its call: its stub is a
plain call) runs on after the close, and the handler faults on the buffer (README,
known limits).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"
SERVER_BASE, CLIENT_BASE, NEXT_BASE = 0x0100_0000, 0x0200_0000, 0x0300_0000
PATHS = ["app-server", "server-server"]
STARTED = 0x57A27ED  # what the handler finds in the buffer at its end (slow_server.c)
REPLIED = ["close = 0", f"call = 0 {STARTED}", "done"]
FAILED = ["close = 0", "call = -32 1", "done"]
FINISHED_FIRST = [f"call = 0 {STARTED}", "close = 0", "done"]
EXIT_STATUS = {"close": 0, "exit": 3}


def spawn_client(kernel: Kernel, mode: str, path: str, base: int):
    as_server = path == "server-server"
    return kernel.spawn(
        build_program(GUESTS / "closing_client.c", base=base),
        ["closing_client", mode] + (["--as-server"] if as_server else []),
        in_kernel=kernel.ipc.traits.servers_in_kernel and as_server,
    )


def lines(group) -> list[str]:
    return bytes(group.console).decode().splitlines()


def start(design: str, server_in_kernel: bool):
    kernel = Kernel(Machine(), ipc=design)
    server = kernel.spawn(
        build_program(GUESTS / "slow_server.c", base=SERVER_BASE),
        ["slow_server"],
        in_kernel=server_in_kernel,
    )
    kernel.run(until=lambda: "slow" in kernel.services)
    return kernel, server


def expected_close(kernel: Kernel, path: str, server_in_kernel: bool) -> list[str]:
    """What the closing client prints, by where the handler runs (see the docstring)."""
    if not server_in_kernel:
        if kernel.ipc.name == "skybridge":
            return FAILED  # a trampoline call: the caller's thread runs the handler
        return FAILED if kernel.ipc.name == "zircon" else REPLIED
    if path == "app-server" and kernel.ipc.name in ("underbridge", "monolithic"):
        return FINISHED_FIRST
    if path == "app-server" and kernel.ipc.name == "pku-user":
        return REPLIED  # its applications call its ring-3 servers through the kernel
    return FAILED


def expected_exit(kernel: Kernel, path: str, server_in_kernel: bool) -> list[str]:
    if expected_close(kernel, path, server_in_kernel) == FINISHED_FIRST:
        return [f"call = 0 {STARTED}"]
    return []


def placements() -> list[tuple[str, bool]]:
    """Every design with its servers where it puts them, and in user space too where
    that is elsewhere."""
    cases = []
    for design in DESIGNS:
        in_kernel = Kernel(Machine(), ipc=design).ipc.traits.servers_in_kernel
        cases.append((design, in_kernel))
        if in_kernel:
            cases.append((design, False))
    return cases


def placement_id(case: tuple[str, bool]) -> str:
    return f"{case[0]}-{'kernel' if case[1] else 'user'}"


CASES = placements()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["close", "exit"])
@pytest.mark.parametrize("case", CASES, ids=placement_id)
def test_a_close_during_a_call_leaves_the_server_serving(case, mode, path):
    design, in_kernel = case
    kernel, server = start(design, in_kernel)
    client = spawn_client(kernel, mode, path, CLIENT_BASE)
    kernel.run(until=lambda: not client.running or not server.running)
    if (design, in_kernel, mode, path) == ("monolithic", True, "close", "server-server"):
        assert server.state is GroupState.FAULTED  # the exception: no isolation, no records
        assert server.fault.instruction == "mov qword ptr [rdx + 8], 0xd0e"
        return
    assert server.running, (server.fault, lines(server))
    assert client.state is GroupState.EXITED, (client.fault, lines(client))
    assert client.exit_status == EXIT_STATUS[mode]
    expect = expected_close if mode == "close" else expected_exit
    assert lines(client) == expect(kernel, path, in_kernel)
    following = spawn_client(kernel, "call", path, NEXT_BASE)
    kernel.run(until=lambda: not following.running)
    assert lines(following) == ["next = 0 7"] and following.exit_status == 0
    assert server.running and not getattr(kernel, "orphans", {})


@pytest.mark.parametrize("mode", ["close", "exit"])
def test_the_buffer_leaves_the_client_at_once_and_the_server_after_its_call(mode):
    """sel4: from the close to the server's REPLY_WAIT the buffer is mapped in the
    server only (an orphan); then it is freed."""
    kernel, server = start("sel4", False)
    client = spawn_client(kernel, mode, "app-server", CLIENT_BASE)
    kernel.run(until=lambda: "slow" in kernel.services and kernel.services["slow"].connections)
    [conn] = kernel.services["slow"].connections
    buffer = conn.buffer
    kernel.run(until=lambda: not conn.alive)
    assert [space for space, _ in buffer.mappings] == [server.vmspace]
    assert list(kernel.orphans.values()) == [buffer] and buffer.alive
    [holder] = kernel.orphans
    assert holder.group is server and buffer in server.owned
    kernel.run(until=lambda: not kernel.orphans)
    assert not buffer.alive and not buffer.mappings and buffer not in server.owned
    kernel.run(until=lambda: not client.running)
    assert server.running and client.exit_status == EXIT_STATUS[mode]


def test_an_orphan_goes_with_its_server():
    """The server ends before its call is over: the orphan is freed with it."""
    kernel, server = start("sel4", False)
    client = spawn_client(kernel, "close", "app-server", CLIENT_BASE)
    kernel.run(until=lambda: bool(kernel.orphans))
    [buffer] = kernel.orphans.values()
    kernel.kill(server)
    assert not buffer.alive and not buffer.mappings
    kernel.run(until=lambda: not client.running)
    assert not kernel.orphans or not any(b.alive for b in kernel.orphans.values())
    assert lines(client) == ["close = 0", "call = -32 1", "done"]
