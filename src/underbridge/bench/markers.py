"""Timing by markers: how every benchmark measures guest code, whatever the placement.

A guest marks the start of its timed loop with a zero-length write (m0), its end with
another (m1), and then one more straight away (m2); the kernel sees each as a syscall
even when the loop itself never enters the kernel (gate calls). At each marker the
recorder notes the simulated cycles, the hardware events and the wall time; one
iteration costs ((m1 - m0) - (m2 - m1)) / rounds simulated cycles: the loop without one
marker's cost. Wall time is (m1 - m0) / rounds: subtracting one noisy wall interval from
another could even go negative, while a marker's wall cost is negligible next to a loop.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from underbridge.abi.syscalls import Sys
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.thread import Thread


@dataclass(frozen=True, slots=True)
class Mark:
    cycles: int
    wall: float
    events: Counter[str]
    by_category: Counter[str]  # cycles per attribution category (machine/accounting.py)


@dataclass(slots=True)
class MarkRecorder:
    """Notes every marker one cap group makes; attach with `watch`."""

    kernel: Kernel
    group: CapGroup | None = None
    marks: list[Mark] = field(default_factory=list)

    def watch(self, group: CapGroup) -> MarkRecorder:
        self.group = group
        self.kernel.syscall_observers.append(self._observe)
        return self

    def _observe(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        if thread.group is self.group and number == Sys.WRITE and args[1] == 0:
            tally = self.kernel.machine.tally()
            self.marks.append(
                Mark(tally.cycles, time.perf_counter(), tally.events, tally.by_category)
            )

    @property
    def complete(self) -> bool:
        return len(self.marks) >= 3

    def per_round(self, rounds: int) -> tuple[float, float, dict[str, float]]:
        """(simulated cycles, wall seconds, events) of one iteration of the marked loop."""
        m0, m1, m2 = self.marks[:3]
        cycles = ((m1.cycles - m0.cycles) - (m2.cycles - m1.cycles)) / rounds
        wall = (m1.wall - m0.wall) / rounds
        events = Counter(m1.events)
        events.subtract(m0.events)
        events.subtract(m2.events)
        events.update(m1.events)
        return cycles, wall, {k: v / rounds for k, v in sorted(events.items()) if v}
