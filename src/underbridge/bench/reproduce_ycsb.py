"""The YCSB-A part of `underbridge reproduce`: SQLite throughput per IPC design.

Runs `bench.ycsb` for every mode it supports, on the same seeded workload, and
reports simulated throughput and each mode's speedup over sel4 (throughput ratio).
Writes DIR/ycsb.json (every result) and DIR/ycsb_throughput.png (`bench.plots`).

No published YCSB-A figure is compared here: the talk's chart carries no numbers in
the design brief, so the table shows only what was measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from underbridge.bench import ycsb

RECORDS = OPS = 1_000
QUICK_RECORDS = QUICK_OPS = 200
SEED = 1
BASELINE = "sel4"
JSON_NAME = "ycsb.json"
PLOT_NAME = "ycsb_throughput.png"

BREAKDOWN = (ycsb.APP, "ipc", "kernel", ycsb.SERVER)

Progress = Callable[[str, int, int], None]  # (mode, done, total) within that mode


@dataclass(frozen=True, slots=True)
class YcsbReproduction:
    records: int
    ops: int
    seed: int
    results: dict[str, ycsb.YcsbResult]
    json_path: Path
    plot_path: Path

    def speedup(self, mode: str) -> float | None:
        """Throughput of `mode` over the baseline's, if the baseline ran."""
        base = self.results.get(BASELINE)
        return None if base is None else self.results[mode].sim_ops_per_sec / base.sim_ops_per_sec

    def to_json(self) -> dict[str, object]:
        return {
            "records": self.records,
            "ops": self.ops,
            "seed": self.seed,
            "baseline": BASELINE,
            "modes": {
                mode: {**result.to_json(), "speedup_over_baseline": self.speedup(mode)}
                for mode, result in self.results.items()
            },
        }


def run(
    records: int,
    ops: int,
    out: Path,
    *,
    seed: int = SEED,
    progress: Progress | None = None,
    modes: Sequence[str] = ycsb.MODES,
) -> YcsbReproduction:
    from underbridge.bench import plots

    results = {}
    for mode in modes:

        def report(done: int, total: int, mode: str = mode) -> None:
            if progress is not None:
                progress(mode, done, total)

        results[mode] = ycsb.run(mode, records, ops, seed, progress=report)
    out.mkdir(parents=True, exist_ok=True)
    reproduction = YcsbReproduction(records, ops, seed, results, out / JSON_NAME, out / PLOT_NAME)
    reproduction.json_path.write_text(json.dumps(reproduction.to_json(), indent=2) + "\n")
    plots.ycsb_throughput(
        reproduction.plot_path,
        [
            plots.ThroughputBar(mode, r.sim_ops_per_sec, reproduction.speedup(mode), r.breakdown)
            for mode, r in results.items()
        ],
        title=f"SQLite under YCSB-A ({records:,} records, {ops:,} operations, seed {seed})",
        baseline=BASELINE,
    )
    return reproduction


def throughput_table(reproduction: YcsbReproduction) -> Table:
    table = Table(
        title=f"underbridge reproduce: SQLite under YCSB-A "
        f"({reproduction.records:,} records, {reproduction.ops:,} operations)"
    )
    table.add_column("mode", no_wrap=True)
    table.add_column("simulated ops/s", justify="right")
    table.add_column(f"speedup over {BASELINE}", justify="right")
    table.add_column("IPC calls / op", justify="right")
    table.add_column("wall ops/s", justify="right")
    for mode, result in reproduction.results.items():
        speedup = reproduction.speedup(mode)
        table.add_row(
            mode,
            f"{result.sim_ops_per_sec:,.0f}",
            "-" if speedup is None else f"{speedup:.2f}x",
            f"{result.ipc_calls_per_op:.1f}",
            f"{result.wall_ops_per_sec:,.0f}",
        )
    table.caption = "simulated: operations per second at a nominal 2.0 GHz"
    return table


def breakdown_table(reproduction: YcsbReproduction) -> Table:
    table = Table(title="where an operation's simulated cycles go")
    table.add_column("mode", no_wrap=True)
    table.add_column("total", justify="right")
    for name in BREAKDOWN:
        table.add_column(name, justify="right")
    for mode, result in reproduction.results.items():
        table.add_row(
            mode,
            f"{result.sim_cycles_per_op:,.0f}",
            *(f"{result.breakdown.get(name, 0.0):,.0f}" for name in BREAKDOWN),
        )
    table.caption = (
        "application: the ycsb guest (SQLite, musl, VFS); ipc: IPC syscalls' "
        "kernel paths and gates; kernel: other kernel work; server: fs and "
        "ramdisk"
    )
    return table
