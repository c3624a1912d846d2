"""`underbridge bench migrate`: what live migration costs, and what placement policies
make of it (issue 14 item 4).

Two parts, each in its own module:
  (a) migrate_cost.py: one migration each way against the server's size and its
      connections: simulated cycles, wall time, and the events it is made of;
  (b) migrate_workload.py: 24 servers behind a router whose call mix shifts between
      phases, under every placement policy, all-user-space (sel4) and an oracle.
The JSON has `migration_cycles` (per direction: the smallest point's cycles, and every
point), `policies` (one object per placement: policy, ops_per_sec, migrations, ...) and
the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from rich.table import Table

from underbridge.bench import migrate_cost, migrate_workload
from underbridge.bench.migrate_cost import Move
from underbridge.bench.migrate_workload import PLACEMENTS, PlacementRun, Workload

SIZES = (0, 64, 256)  # ballast pages
CONNECTIONS = (1, 8, 32)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class MigrateBenchResult:
    moves: tuple[Move, ...]
    runs: tuple[PlacementRun, ...]
    workload: Workload

    def to_json(self) -> dict[str, object]:
        cycles: dict[str, object] = {}
        for direction in ("in", "out"):
            points = [m.to_json() for m in self.moves if m.direction == direction]
            cycles[direction] = {
                "cycles": points[0]["cycles"] if points else None,
                "points": points,
            }
        return {
            "migration_cycles": cycles,
            "workload": asdict(self.workload),
            "policies": [run.to_json() for run in self.runs],
        }


def run(
    *,
    sizes: Sequence[int] = SIZES,
    connections: Sequence[int] = CONNECTIONS,
    placements: Sequence[str] = PLACEMENTS,
    workload: Workload | None = None,
    progress: Progress | None = None,
) -> MigrateBenchResult:
    workload = workload or Workload()
    moves: list[Move] = []
    for pages in sizes:
        for count in connections:
            if progress is not None:
                progress(f"migration of a {pages}-page server with {count} connections")
            moves.extend(migrate_cost.measure(pages, count))
    runs = []
    for placement in placements:
        if progress is not None:
            progress(f"workload under {placement}")
        runs.append(migrate_workload.run(placement, workload))
    return MigrateBenchResult(tuple(moves), tuple(runs), workload)


def report_tables(result: MigrateBenchResult) -> list[Table]:
    """The two parts as tables: the migrations, then the placements."""
    moves = Table(title="one migration (underbridge; sized server, holder application)")
    for column in ("way", "data pages", "pages moved", "connections", "cycles", "wall us"):
        moves.add_column(column, justify="left" if column == "way" else "right")
    moves.add_column("events")
    for m in result.moves:
        events = ", ".join(f"{k} {v}" for k, v in m.events.items())
        moves.add_row(
            m.direction,
            str(m.ballast_pages),
            str(m.pages),
            str(m.connections),
            f"{m.cycles:,}",
            f"{m.wall_us:,.0f}",
            events,
        )
    w = result.workload
    runs = Table(
        title=f"{w.servers} servers behind a router, {w.phases} phases of {w.calls:,} calls "
        f"({w.hot} hot servers each); calls per simulated second"
    )
    for column in ("placement", "mode", "overall", "per phase", "migrations", "their cycles"):
        runs.add_column(column, justify="left" if column in ("placement", "mode") else "right")
    for r in result.runs:
        runs.add_row(
            r.placement,
            r.mode,
            f"{r.ops_per_sec:,.0f}",
            " / ".join(f"{x:,.0f}" for x in r.phase_ops_per_sec),
            str(r.migrations) + (f" ({r.refused} refused)" if r.refused else ""),
            f"{r.migration_cycles:,}",
        )
    return [moves, runs]
