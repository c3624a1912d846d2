"""`underbridge bench ipc`: IPC round trips between real guest binaries, per path.

Two paths, each on a fresh machine with the echo server (guest/servers/echo):
  app-server     the pingpong application (ring 3) calls echo;
  server-server  pingpong registers a service of its own first, so a server calls echo.
Placement follows the mode: under `underbridge` echo runs in the kernel in its own
execution domain, and so does pingpong on the server-server path; otherwise every
program runs in ring 3 in its own address space.

Measurement, the same for every design (a gate call never enters the kernel, so the
kernel cannot time calls one by one): pingpong marks its loop of ROUNDS calls, and a
round trip is the loop's cost per call (bench/markers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from underbridge.bench.markers import MarkRecorder
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine

PATHS = ("app-server", "server-server")
ECHO_BASE = 0x0100_0000
PINGPONG_BASE = 0x0200_0000

Progress = Callable[[int], None]
#: Called with the kernel before any program is spawned (the profiler attaches there).
KernelObserver = Callable[[Kernel], object]


class BenchFailed(RuntimeError):
    """A benchmark guest did not finish cleanly."""


@dataclass(frozen=True, slots=True)
class PathResult:
    path: str
    sim_cycles_per_rtt: float | None  # None: measured with --no-accounting
    wall_us_per_rtt: float
    rounds: int
    events_per_rtt: dict[str, float] | None = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IpcBenchResult:
    mode: str
    rounds: int
    results: tuple[PathResult, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "rounds": self.rounds,
            "results": [
                {k: v for k, v in asdict(r).items() if v is not None} for r in self.results
            ],
        }


def run_path(
    mode: str,
    path: str,
    rounds: int,
    progress: Progress | None = None,
    *,
    accounting: bool = True,
    observe: KernelObserver | None = None,
) -> PathResult:
    """accounting=False: wall time only (no cycle figures), to see what accounting costs.
    observe: called with the kernel before anything is spawned."""
    machine = Machine(accounting=accounting)
    kernel = Kernel(machine, ipc=mode)
    if observe is not None:
        observe(kernel)
    in_kernel = kernel.ipc.traits.servers_in_kernel
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=in_kernel)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )  # serving
    args = ["pingpong", str(rounds), "echo"] + (["--as-server"] if path == "server-server" else [])
    client = kernel.spawn(
        build_program("pingpong", base=PINGPONG_BASE),
        args,
        in_kernel=in_kernel and path == "server-server",
    )
    recorder = MarkRecorder(kernel).watch(client)
    kernel.run(until=lambda: not client.running)
    if progress is not None:
        progress(rounds)
    if client.state is not GroupState.EXITED or client.exit_status != 0 or not recorder.complete:
        raise BenchFailed(
            f"pingpong ended {client.state.value} ({client.exit_status}, "
            f"{client.fault}): {bytes(client.console).decode(errors='replace')}"
        )
    if not echo.running:
        raise BenchFailed(f"echo ended early: {bytes(echo.console).decode(errors='replace')}")
    cycles, wall, events = recorder.per_round(rounds)
    if not accounting:
        return PathResult(path, None, wall * 1e6, rounds, None)
    return PathResult(path, cycles, wall * 1e6, rounds, events)


def run(
    mode: str, rounds: int, progress: Progress | None = None, *, accounting: bool = True
) -> IpcBenchResult:
    if rounds < 1:
        raise ValueError("at least one round is needed")
    return IpcBenchResult(
        mode,
        rounds,
        tuple(run_path(mode, path, rounds, progress, accounting=accounting) for path in PATHS),
    )
