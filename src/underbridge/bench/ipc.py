"""`underbridge bench ipc`: IPC round trips between real guest binaries, per path.

Two paths, each on a fresh machine with the echo server (guest/servers/echo):
  app-server     the pingpong application calls echo;
  server-server  pingpong registers a service of its own first, so a server calls echo.
A round trip is measured the way sel4bench measures one with a cycle counter around
the call: the simulated cycles (and wall time) between one IPC_CALL entry of the client
and its next, i.e. one call, the server's reply_wait, and the client's loop step. The
median over all rounds is reported; the first rounds are kept (nothing is warmed up in
a model whose costs do not change with caches).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.connection import Connection
from underbridge.kernel.objects.thread import Thread
from underbridge.machine.cpu import Machine
from underbridge.toolchain import build_program

PATHS = ("app-server", "server-server")
ECHO_BASE = 0x0100_0000
PINGPONG_BASE = 0x0200_0000

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


def _median_delta(samples: list[float]) -> float:
    return statistics.median(b - a for a, b in pairwise(samples))


def run_path(mode: str, path: str, rounds: int, progress: Progress | None = None) -> PathResult:
    machine = Machine()
    kernel = Kernel(machine, ipc=mode)
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"])
    kernel.run(until=lambda: "echo" in kernel.services and bool(kernel.services["echo"].receivers))
    args = ["pingpong", str(rounds), "echo"] + (["--as-server"] if path == "server-server" else [])
    client = kernel.spawn(build_program("pingpong", base=PINGPONG_BASE), args)
    cycles: list[float] = []
    walls: list[float] = []
    events: list[dict[str, int]] = []

    def observe(thread: Thread, conn: Connection) -> None:
        if thread.group is client and conn.service.name == "echo":
            tally = machine.tally()
            cycles.append(tally.cycles)
            walls.append(time.perf_counter())
            if len(events) < 3:
                events.append(dict(tally.events))
            if progress is not None and len(cycles) % 1000 == 0:
                progress(1000)

    kernel.call_observers.append(observe)
    kernel.run(until=lambda: not client.running)
    if client.state is not GroupState.EXITED or client.exit_status != 0:
        raise BenchFailed(f"pingpong ended {client.state.value} ({client.exit_status}, "
                          f"{client.fault}): {bytes(client.console).decode(errors='replace')}")
    if not echo.running:
        raise BenchFailed(f"echo ended early: {bytes(echo.console).decode(errors='replace')}")
    per_rtt = {name: events[2].get(name, 0) - events[1].get(name, 0) for name in events[2]}
    return PathResult(path, _median_delta(cycles), _median_delta(walls) * 1e6, rounds,
                      {k: v for k, v in per_rtt.items() if v})


def run(mode: str, rounds: int, progress: Progress | None = None) -> IpcBenchResult:
    if rounds < 3:
        raise ValueError("at least 3 rounds are needed to take a median of round trips")
    return IpcBenchResult(mode, rounds, tuple(run_path(mode, path, rounds, progress)
                                              for path in PATHS))
