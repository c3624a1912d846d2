"""What `underbridge profile` runs: the IPC benchmark, YCSB, or one program, profiled.

Each target is the same run as its command (`bench ipc`, `bench ycsb`, `run`), with the
profiler (profiler.py) attached to its kernel before anything is spawned and finished
after the run. A profile covers the whole run (for YCSB: loading, the operations and
the markers, not only the timed stretch a benchmark reports per operation), so its
total is the machine's simulated cycles at the end (`Target.run_cycles`).

Invariants:
  - The run is the benchmark's own code path (its `observe` hook), so its simulated
    figures are the unprofiled run's (tests/bench/test_profile.py checks they are).
  - A target whose guest fails raises the benchmark's own error; nothing is reported
    as profiled that did not run to its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from underbridge.bench.profile_report import Profile
from underbridge.bench.profiler import Profiler

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel


@dataclass(frozen=True, slots=True)
class Target:
    """A profiled run: its profile, the machine's cycles at its end, a summary line."""

    profile: Profile
    run_cycles: int
    summary: str


class _Attach:
    """The `observe` hook of a benchmark: attach a profiler to the kernel it makes."""

    def __init__(self) -> None:
        self.profiler: Profiler | None = None

    def __call__(self, kernel: Kernel) -> None:
        self.profiler = Profiler(kernel).attach()

    def finish(self, title: str) -> tuple[Profile, int]:
        if self.profiler is None:
            raise RuntimeError("the benchmark never made its kernel")
        profile = self.profiler.finish(title)
        return profile, self.profiler.machine.tally().cycles


def profile_ipc(mode: str, path: str, rounds: int) -> Target:
    """`bench ipc --mode MODE --rounds N`, one path (app-server or server-server)."""
    from underbridge.bench import ipc

    attach = _Attach()
    result = ipc.run_path(mode, path, rounds, observe=attach)
    profile, cycles = attach.finish(f"bench ipc --mode {mode} --rounds {rounds}, {path}")
    summary = f"{result.sim_cycles_per_rtt:,.0f} simulated cycles per round trip"
    return Target(profile, cycles, summary)


def profile_ycsb(mode: str, records: int, ops: int, seed: int, workload: str) -> Target:
    """`bench ycsb` with the same arguments."""
    from underbridge.bench import ycsb

    attach = _Attach()
    result = ycsb.run(mode, records, ops, seed, workload, observe=attach)
    title = f"bench ycsb --mode {mode} --records {records} --ops {ops} --workload {workload}"
    profile, cycles = attach.finish(title)
    summary = (
        f"{result.sim_cycles_per_op:,.0f} simulated cycles per operation ({result.summary.strip()})"
    )
    return Target(profile, cycles, summary)


def profile_program(elf: Path, argv: list[str], name: str, budget: int) -> Target:
    """`run`: one program in ring 3, until it ends or spends `budget` cycles (0: none)."""
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.cpu import Machine

    machine = Machine()
    kernel = Kernel(machine)
    profiler = Profiler(kernel).attach()
    process = kernel.spawn(elf, argv, name=name)
    kernel.run(until=lambda: budget > 0 and machine.clock() >= budget)
    profile = profiler.finish(f"run {' '.join(argv)}")
    if process.running:
        state = "stopped (budget spent or deadlock)"
    elif process.fault is not None:
        state = f"terminated: {process.fault.describe()}"
    else:
        state = f"exited (status {process.exit_status})"
    return Target(profile, machine.tally().cycles, f"{name} {state}")
