"""`bench ycsb --migrate-at N` / `--migrate-out-at N`: the storage servers move in the
middle of a YCSB run (kernel/migration.py), and the run is measured before and after.

--migrate-at N starts fs and ramdisk in user space (migratable: their stacks in their
regions) and, once the guest has run N operations, moves ramdisk and then fs into
kernel space (fs calls ramdisk, so ramdisk goes first); --migrate-out-at N starts them
in kernel space and moves fs and then ramdisk out. Each migration waits for its server
to be quiescent, so the guest keeps running meanwhile; no operation is lost or repeated,
which the run's usual checks confirm (the guest's results equal the native twin's, the
file system passes its check).

Figures: throughput before (from the start of the operations to the first request) and
after (from the last migration's completion to the end of the operations, less one
marker), at NOMINAL_HZ; the operations run while a migration waited are in neither
window. Each migration's simulated cycles and events come from its log entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.errors import UserError
from underbridge.machine.costs import NOMINAL_HZ

if TYPE_CHECKING:
    from rich.table import Table

    from underbridge.bench.markers import Mark
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.migration import Migration
    from underbridge.kernel.objects.capgroup import CapGroup


class MigrationFailed(UserError):
    """A migration the benchmark asked for was refused."""


@dataclass(eq=False)
class MigrationPlan:
    """Move `groups` in order (to_kernel or out) once `at` operations have run."""

    at: int
    to_kernel: bool
    groups: list[CapGroup]
    records: int
    migrations: list[Migration] = field(default_factory=list)
    start: tuple[int, int, float] | None = None  # (progress, cycles, wall) at the request
    done: tuple[int, int, float] | None = None  # the same at the last completion

    def poll(self, kernel: Kernel, progress: int) -> None:
        """Called after every kernel event with the guest's progress (records + ops)."""
        if self.done is not None or progress < self.records + self.at:
            return
        if self.migrations and self.migrations[-1].state == "pending":
            return
        if self.migrations and self.migrations[-1].state == "refused":
            raise MigrationFailed(self.migrations[-1].line())
        now = (progress, kernel.machine.tally().cycles, time.perf_counter())
        if self.start is None:
            self.start = now
        if len(self.migrations) == len(self.groups):
            self.done = now
            return
        group = self.groups[len(self.migrations)]
        reason = f"bench ycsb: after {self.at} operations"
        self.migrations.append(kernel.migrate(group, to_kernel=self.to_kernel, reason=reason))
        self.poll(kernel, progress)  # done at once if quiescent: go on to the next

    def report(self, ops_mark: Mark, end: Mark, marker_cycles: int, ops: int) -> dict:
        """Throughput before and after, and what each migration cost."""
        if self.start is None or self.done is None:
            raise MigrationFailed(f"the run ended before {self.at} operations had run")
        ops_before = self.start[0] - self.records
        ops_after = self.records + ops - self.done[0]
        before = self.start[1] - ops_mark.cycles
        after = end.cycles - self.done[1] - marker_cycles
        return {
            "direction": "in" if self.to_kernel else "out",
            "at": self.at,
            "ops_before": ops_before,
            "ops_after": ops_after,
            "sim_ops_per_sec_before": _rate(ops_before, before),
            "sim_ops_per_sec_after": _rate(ops_after, after),
            "wall_ops_per_sec_before": _rate(ops_before, self.start[2] - ops_mark.wall, 1),
            "wall_ops_per_sec_after": _rate(ops_after, end.wall - self.done[2], 1),
            "migrations": [
                {
                    "group": m.group,
                    "direction": m.direction,
                    "cycles": m.cycles,
                    "pages": m.pages,
                    "connections": m.connections,
                    "events": dict(sorted(m.events.items())),
                }
                for m in self.migrations
            ],
        }


def _rate(ops: int, span: float, hz: float = NOMINAL_HZ) -> float | None:
    return ops * hz / span if ops > 0 and span > 0 else None


def migration_rows(table: Table, migration: dict) -> None:
    """The report's rows for a run with a migration in the middle."""
    where = "into kernel space" if migration["direction"] == "in" else "out to user space"
    table.add_row(f"migration {where} after", f"{migration['at']:,} operations")
    for when in ("before", "after"):
        rate = migration[f"sim_ops_per_sec_{when}"]
        shown = "-" if rate is None else f"{rate:,.0f}"
        ops = migration[f"ops_{when}"]
        table.add_row(f"  simulated throughput {when} ({ops:,} ops)", shown)
    for moved in migration["migrations"]:
        table.add_row(
            f"  {moved['group']} {moved['direction']}: simulated cycles",
            f"{moved['cycles']:,} ({moved['pages']:,} pages)",
        )
