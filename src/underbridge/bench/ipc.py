"""`underbridge bench ipc`: IPC round trips between real guest binaries, per path.

Two paths, each on a fresh machine with the echo server (guest/servers/echo):
  app-server     the pingpong application (ring 3) calls echo;
  server-server  pingpong registers a service of its own first, so a server calls echo.
Placement follows the mode: under `underbridge` echo runs in the kernel in its own
execution domain, and so does pingpong on the server-server path; otherwise every
program runs in ring 3 in its own address space.

Measurement, the same for every design (a gate call never enters the kernel, so the
kernel cannot time calls one by one): pingpong makes a zero-length write before its
loop of ROUNDS calls (m0), one after it (m1), and one more straight away (m2). The
kernel notes the simulated cycles, the hardware events and the wall time at each, and
a round trip is ((m1 - m0) - (m2 - m1)) / ROUNDS: the loop without one marker's cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.kernel.syscalls import Sys
from underbridge.machine.cpu import Machine
from underbridge.toolchain import build_program

PATHS = ("app-server", "server-server")
ECHO_BASE = 0x0100_0000
PINGPONG_BASE = 0x0200_0000
IN_KERNEL_MODES = frozenset({"underbridge"})

Progress = Callable[[int], None]


class BenchFailed(RuntimeError):
    """A benchmark guest did not finish cleanly."""


@dataclass(frozen=True, slots=True)
class PathResult:
    path: str
    sim_cycles_per_rtt: float
    wall_us_per_rtt: float
    rounds: int
    events_per_rtt: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IpcBenchResult:
    mode: str
    rounds: int
    results: tuple[PathResult, ...]

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "rounds": self.rounds,
                "results": [asdict(r) for r in self.results]}


@dataclass(frozen=True, slots=True)
class Mark:
    cycles: int
    wall: float
    events: Counter[str]


def per_round(marks: list[Mark], rounds: int) -> tuple[float, float, dict[str, float]]:
    m0, m1, m2 = marks[:3]
    cycles = ((m1.cycles - m0.cycles) - (m2.cycles - m1.cycles)) / rounds
    wall = ((m1.wall - m0.wall) - (m2.wall - m1.wall)) / rounds
    events = Counter(m1.events)
    events.subtract(m0.events)
    events.subtract(m2.events)
    events.update(m1.events)
    return cycles, wall, {k: v / rounds for k, v in sorted(events.items()) if v}


def run_path(mode: str, path: str, rounds: int, progress: Progress | None = None) -> PathResult:
    machine = Machine()
    kernel = Kernel(machine, ipc=mode)
    in_kernel = mode in IN_KERNEL_MODES
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=in_kernel)
    kernel.run(until=lambda: "echo" in kernel.services
               and echo.threads[0].state is ThreadState.BLOCKED)  # serving
    args = ["pingpong", str(rounds), "echo"] + (["--as-server"] if path == "server-server" else [])
    client = kernel.spawn(build_program("pingpong", base=PINGPONG_BASE), args,
                          in_kernel=in_kernel and path == "server-server")
    marks: list[Mark] = []

    def observe(thread: Thread, number: int, args: tuple[int, ...]) -> None:
        if thread.group is client and number == Sys.WRITE and args[1] == 0:
            tally = machine.tally()
            marks.append(Mark(tally.cycles, time.perf_counter(), tally.events))

    kernel.syscall_observers.append(observe)
    kernel.run(until=lambda: not client.running)
    if progress is not None:
        progress(rounds)
    if client.state is not GroupState.EXITED or client.exit_status != 0 or len(marks) < 3:
        raise BenchFailed(f"pingpong ended {client.state.value} ({client.exit_status}, "
                          f"{client.fault}): {bytes(client.console).decode(errors='replace')}")
    if not echo.running:
        raise BenchFailed(f"echo ended early: {bytes(echo.console).decode(errors='replace')}")
    cycles, wall, events = per_round(marks, rounds)
    return PathResult(path, cycles, wall * 1e6, rounds, events)


def run(mode: str, rounds: int, progress: Progress | None = None) -> IpcBenchResult:
    if rounds < 1:
        raise ValueError("at least one round is needed")
    return IpcBenchResult(mode, rounds, tuple(run_path(mode, path, rounds, progress)
                                              for path in PATHS))
