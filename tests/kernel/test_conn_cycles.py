"""Connect, call, close, many times: every frame, slot, key and list entry comes back.

The conncycle guest (guest/apps/conncycle.c) connects to echo, calls it once, writes
its buffer and closes the connection by deleting its cap, CYCLES times; it checks
itself that every connection gets the same cap slot. Each placement is run: echo and
the client in ring 3 under every design, echo in kernel space with the client in
ring 3, and both in kernel space (the client calls the gate directly). The machine's
frames in use are counted after echo is serving and before the client is spawned,
and again once the client has ended: the two counts must be equal.

Each connection's buffer lives at a new address (IPC_WINDOW + badge * 64 KiB) and,
under underbridge, its gate and control page too, so a page table that kept its empty
tables would keep one more frame every 32 connections (tests/regress/
test_page_table_leak.py). Placements in user space run the issue's 3,000 cycles; the
in-kernel ones run fewer, and their 3,000-cycle runs are marked slow.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from underbridge.abi.syscalls import Sys
from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine


@dataclass(frozen=True)
class Placement:
    mode: str
    echo_in_kernel: bool
    client_in_kernel: bool
    cycles: int  # enough to cross many page-table boundaries, cheap enough for CI

    @property
    def id(self) -> str:
        where = (
            "kernel" if self.echo_in_kernel else "user",
            "kernel" if self.client_in_kernel else "user",
        )
        return f"{self.mode}-echo_{where[0]}-client_{where[1]}"


# An in-kernel connect generates a gate (about 10 ms of wall time today), so those
# placements run fewer cycles; 64 still spans two 2 MiB page tables of buffers.
ISSUE_CYCLES = 3000
PLACEMENTS = [
    Placement("sel4", False, False, ISSUE_CYCLES),
    Placement("sel4-kpti", False, False, ISSUE_CYCLES),
    Placement("zircon", False, False, ISSUE_CYCLES),
    Placement("underbridge", False, False, ISSUE_CYCLES),
    Placement("underbridge", True, False, 100),
    Placement("underbridge", True, True, 64),
]


@dataclass
class Run:
    kernel: Kernel
    echo: CapGroup
    client: CapGroup
    frames_before: int  # in use with echo serving, before the client was spawned
    keys_before: int  # protection keys free then (underbridge)

    @property
    def frames_after(self) -> int:
        return self.kernel.machine.frames.in_use


def start(placement: Placement, args: list[str]) -> Run:
    kernel = Kernel(Machine(), ipc=placement.mode)
    echo = kernel.spawn(
        build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=placement.echo_in_kernel
    )
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    before = kernel.machine.frames.in_use
    keys = kernel.ipc.keys.available if placement.mode == "underbridge" else 0
    client = kernel.spawn(
        build_program("conncycle", base=PINGPONG_BASE),
        ["conncycle", *args],
        in_kernel=placement.client_in_kernel,
    )
    return Run(kernel, echo, client, before, keys)


def finish(placement: Placement, args: list[str]) -> Run:
    run = start(placement, args)
    run.kernel.run(until=lambda: not run.client.running)
    return run


def assert_all_returned(run: Run, placement: Placement) -> None:
    assert run.frames_after == run.frames_before
    assert run.echo.running
    service = run.kernel.services["echo"]
    assert service.connections == [] and run.client.owned == []
    if placement.mode == "underbridge":
        assert run.kernel.ipc.gates() == []
        assert run.kernel.ipc.keys.available == run.keys_before


def assert_ok(run: Run, cycles: int) -> None:
    console = bytes(run.client.console).decode()
    assert (run.client.state, run.client.exit_status) == (GroupState.EXITED, 0), console
    assert console == f"conncycle: {cycles} cycles ok\n"


@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: p.id)
def test_connect_call_close_cycles_return_every_frame(placement):
    run = finish(placement, [str(placement.cycles)])
    assert_ok(run, placement.cycles)
    assert_all_returned(run, placement)


@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: p.id)
def test_a_connection_left_open_is_closed_when_the_client_exits(placement):
    run = finish(placement, ["40", "--keep"])
    assert_ok(run, 40)
    assert_all_returned(run, placement)


@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: p.id)
def test_killing_the_client_with_a_connection_open_returns_every_frame(placement):
    run = start(placement, [str(placement.cycles)])
    connects = []
    run.kernel.syscall_observers.append(
        lambda thread, number, _args: (
            connects.append(number)
            if thread.group is run.client and number == Sys.IPC_CONNECT
            else None
        )
    )
    run.kernel.run(until=lambda: len(connects) == 30)
    assert run.client.running and len(run.client.owned) == 1  # the 30th is open
    run.kernel.kill(run.client)
    assert run.client.exit_status == -9
    assert_all_returned(run, placement)


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement", [p for p in PLACEMENTS if p.cycles < ISSUE_CYCLES], ids=lambda p: p.id
)
def test_the_issues_3000_cycles_return_every_frame(placement):
    run = finish(placement, [str(ISSUE_CYCLES)])
    assert_ok(run, ISSUE_CYCLES)
    assert_all_returned(run, placement)
