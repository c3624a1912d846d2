"""`underbridge bench migrate`, part (b): more servers than keys, under each placement.

The workload: SERVERS echo servers (s00, s01, ...) behind the router application
(guest/apps/router.c), which makes CALLS calls per phase; in each phase 15 of 16 calls
go to that phase's HOT servers, and the hot set moves on every phase. With 24 servers
and 15 keys, no fixed placement suits every phase.

Placements (`PLACEMENTS`):
  sel4       every server in user space (the seL4 design): the baseline without keys;
  static     underbridge, servers placed first come while keys last (s00..s14), never
             moved (kernel/placement/static.py);
  frequency  the same start, then the sliding-window policy moves servers (frequency.py);
  lru        the same start, then libmpk's LRU of keys (lru.py);
  oracle     the same start, then at each phase's start the phase's hot set is moved in
             (knowing the future), evicting servers outside it only as room is needed.
Every migration's cycles are charged to the machine, so they are in the throughput.
Throughput is calls per simulated second at NOMINAL_HZ, per phase (between the
router's markers) and over the whole run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

from underbridge.abi.syscalls import Sys
from underbridge.bench.ipc import BenchFailed
from underbridge.bench.markers import MarkRecorder
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.placement import MAX_IN_KERNEL, POLICIES, policy_named
from underbridge.kernel.placement.engine import PlacementEngine
from underbridge.machine.costs import NOMINAL_HZ
from underbridge.machine.cpu import Machine

PLACEMENTS = ("sel4", *POLICIES, "oracle")  # cli/measure.py lists the same
ROUTER_BASE = 0x40_0000


@dataclass(frozen=True, slots=True)
class Workload:
    servers: int = 24
    phases: int = 4  # the defaults of `bench migrate`, whose figures the README shows
    calls: int = 4_000  # per phase
    hot: int = 8

    def hot_set(self, phase: int) -> list[str]:
        """The servers phase `phase` sends most calls to (router.c's formula)."""
        return [server_name((phase * self.hot + j) % self.servers) for j in range(self.hot)]


@dataclass(frozen=True, slots=True)
class PlacementRun:
    placement: str
    mode: str
    phase_ops_per_sec: tuple[float, ...]
    ops_per_sec: float
    migrations: int  # done
    migration_cycles: int
    refused: int
    wall_s: float
    log: tuple[str, ...]  # each migration's line

    def to_json(self) -> dict[str, object]:
        return {
            "policy": self.placement,
            "mode": self.mode,
            "ops_per_sec": round(self.ops_per_sec),
            "phase_ops_per_sec": [round(x) for x in self.phase_ops_per_sec],
            "migrations": self.migrations,
            "migration_cycles": self.migration_cycles,
            "refused": self.refused,
            "wall_s": round(self.wall_s, 2),
            "log": list(self.log),  # every migration: what, its cost, and why
        }


def server_name(index: int) -> str:
    return f"s{index:02d}"


def run(placement: str, workload: Workload) -> PlacementRun:
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")
    mode = "sel4" if placement == "sel4" else "underbridge"
    kernel = Kernel(Machine(), ipc=mode)
    servers = _spawn_servers(kernel, workload, in_kernel=mode == "underbridge")
    if placement in POLICIES:
        PlacementEngine(kernel, policy_named(placement))
    router = kernel.spawn(
        build_program("router", base=ROUTER_BASE),
        [
            "router",
            str(workload.servers),
            str(workload.phases),
            str(workload.calls),
            str(workload.hot),
        ],
    )
    recorder = MarkRecorder(kernel).watch(router)
    if placement == "oracle":
        Oracle(kernel, router, servers, workload)
    start = time.perf_counter()
    kernel.run(until=lambda: not router.running)
    wall = time.perf_counter() - start
    if router.exit_status != 0 or len(recorder.marks) != workload.phases + 1:
        raise BenchFailed(f"router: {bytes(router.console).decode(errors='replace')}")
    cycles = [b.cycles - a.cycles for a, b in pairwise(recorder.marks)]
    done = [m for m in kernel.migrations if m.state == "done"]
    return PlacementRun(
        placement,
        mode,
        tuple(workload.calls * NOMINAL_HZ / c for c in cycles),
        workload.calls * workload.phases * NOMINAL_HZ / sum(cycles),
        len(done),
        sum(m.cycles for m in done),
        sum(1 for m in kernel.migrations if m.state == "refused"),
        wall,
        tuple(m.line() for m in kernel.migrations),
    )


def _spawn_servers(kernel: Kernel, workload: Workload, *, in_kernel: bool) -> dict[str, CapGroup]:
    """The echo servers, each in its own region; first come in kernel space while keys
    last (Kernel.spawn runs the rest in user space)."""
    servers = {}
    for index in range(workload.servers):
        name = server_name(index)
        elf = build_program("echo", base=REGION_SIZE * (index + 1))
        servers[name] = kernel.spawn(elf, ["echo", name], name=name, in_kernel=in_kernel)
    kernel.run(until=lambda: all(name in kernel.services for name in servers))
    return servers


class Oracle:
    """At each phase's start (the router's marker), moves that phase's hot set into
    kernel space, evicting servers outside it only as room is needed."""

    def __init__(
        self, kernel: Kernel, router: CapGroup, servers: dict[str, CapGroup], workload: Workload
    ) -> None:
        self.kernel, self.router, self.servers, self.workload = kernel, router, servers, workload
        self.phase = 0
        kernel.syscall_observers.append(self._observe)

    def _observe(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        if thread.group is not self.router or number != Sys.WRITE or args[1] != 0:
            return
        if self.phase < self.workload.phases:
            self._place(self.workload.hot_set(self.phase))
        self.phase += 1

    def _place(self, hot: list[str]) -> None:
        placed = {g.name for g in self.kernel.placement.placed_groups() if g.running}
        wanted = [name for name in hot if name not in placed]
        spare = sorted(placed - set(hot))
        room = MAX_IN_KERNEL - len(placed)
        for name in wanted:
            if room <= 0:
                victim = spare.pop(0)
                self.kernel.migrate(
                    self.servers[victim], to_kernel=False, reason=f"oracle: {name} is hot next"
                )
                room += 1
            self.kernel.migrate(
                self.servers[name], to_kernel=True, reason=f"oracle: hot in phase {self.phase}"
            )
            room -= 1
