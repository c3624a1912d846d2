"""`underbridge reproduce`: every IPC design's round trip beside the published figures.

Runs `bench.ipc` for every design in `kernel.ipc.DESIGNS` (read when `run` is called,
so a new design appears here without a change), then compares:
  - one row per (mode, path): our simulated cycles and wall time per round trip, and
    each published figure that applies to that mode and path (PAPER, below);
  - a published figure whose mode does not exist yet still gets a row, ours empty,
    so the output shows what is still missing;
  - ratios on the server-server path: each mode against sel4 and against underbridge,
    with the same ratio computed from the published figures where both exist (the
    paper's own claim: SkyBridge / UnderBridge, 3.0x in its text, 400 / 109 by its
    figures).
Writes DIR/ipc.json (everything) and DIR/ipc_cycles.png (`bench.plots`).

PAPER is the one table of published end-to-end figures used here. Figures that the
cost model already holds (`machine.costs.REFERENCE`, `COSTS`) are taken from there,
never repeated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rich.table import Table

from underbridge.bench import ipc as ipc_bench
from underbridge.kernel.ipc import registry as designs
from underbridge.machine.costs import COSTS, REFERENCE, UNDERBRIDGE_PAPER

ROUNDS = 2_000
QUICK_ROUNDS = 200
BASELINE = "sel4"  # every mode is compared with this one, and with UNDERBRIDGE ...
UNDERBRIDGE = "underbridge"
RATIO_PATH = "server-server"  # ... on this path (the path UnderBridge's 109 is for)
JSON_NAME = "ipc.json"
PLOT_NAME = "ipc_cycles.png"
UNDERBRIDGE_ATC20 = "UnderBridge, Gu et al., USENIX ATC 2020"

Relation = Literal["=", "~", "<"]  # as published, about, an upper bound
# progress(mode, round trips done since the last call)
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class PaperFigure:
    """A published round-trip (or call) cost, and the modes and path it compares with."""

    key: str
    what: str
    cycles: int
    relation: Relation
    source: str
    modes: tuple[str, ...] = ()  # empty: a yardstick no mode is meant to match
    path: str | None = None  # None: every path of those modes

    def applies_to(self, mode: str, path: str) -> bool:
        return mode in self.modes and self.path in (None, path)

    def shown(self) -> str:
        return f"{'' if self.relation == '=' else self.relation}{self.cycles:,}"


PAPER: tuple[PaperFigure, ...] = (
    PaperFigure(
        "underbridge_ipc_roundtrip",
        "UnderBridge IPC round trip",
        REFERENCE["underbridge_ipc_roundtrip"].cycles,
        "=",
        REFERENCE["underbridge_ipc_roundtrip"].source,
        ("underbridge",),
        "server-server",
    ),
    PaperFigure(
        "skybridge_ipc_roundtrip",
        "SkyBridge IPC round trip",
        400,
        "~",
        UNDERBRIDGE_PAPER,
        ("skybridge",),
    ),
    PaperFigure(
        "sel4_call_reply_skylake",
        "seL4 Call + ReplyRecv on Skylake",
        REFERENCE["sel4_call_reply_skylake"].cycles,
        "=",
        REFERENCE["sel4_call_reply_skylake"].source,
        ("sel4",),
    ),
    PaperFigure(
        "optimized_kernel_ipc",
        "optimized kernel IPC round trip",
        1_500,
        "<",
        UNDERBRIDGE_ATC20,
        ("sel4", "sel4-kpti"),
    ),
    PaperFigure(
        "zircon_channel_call_roundtrip",
        "Zircon channel_call round trip, two processes",
        REFERENCE["zircon_channel_call_roundtrip"].cycles,
        "=",
        REFERENCE["zircon_channel_call_roundtrip"].source,
        ("zircon",),
    ),
    PaperFigure(
        "l4re_ipc_roundtrip",
        "L4Re/Fiasco.OC IPC round trip (2 x one-way inter-task)",
        2 * 1_172,
        "~",
        "L4Re performance overview (l4re.org/performance): inter-address-space IPC, "
        "1,172 cycles one way, Xeon Gold 6248R; published figure only, no design here",
    ),
    PaperFigure(
        "function_call",
        "function-pointer call, no isolation",
        COSTS["function_call"].cycles,
        "~",
        COSTS["function_call"].source,
        ("monolithic",),  # its lower bound: stub + handler, never charged as this figure
        "server-server",
    ),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the comparison: a measured (mode, path), or a figure with no mode yet."""

    mode: str | None
    path: str | None
    sim_cycles: float | None
    wall_us: float | None
    paper: tuple[PaperFigure, ...]


@dataclass(frozen=True, slots=True)
class Ratio:
    """cycles(mode) / cycles(versus) on RATIO_PATH: ours, and the published one if any."""

    mode: str
    versus: str
    ours: float
    paper: float | None


@dataclass(frozen=True, slots=True)
class Reproduction:
    rounds: int
    results: dict[str, ipc_bench.IpcBenchResult]
    wall_seconds: dict[str, float]
    rows: tuple[Row, ...]
    ratios: tuple[Ratio, ...]
    json_path: Path
    plot_path: Path

    def to_json(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "modes": {
                mode: {"bench": result.to_json(), "wall_seconds": self.wall_seconds[mode]}
                for mode, result in self.results.items()
            },
            "paper": [asdict(figure) for figure in PAPER],
            "comparison": [
                {
                    "mode": row.mode,
                    "path": row.path,
                    "sim_cycles_per_rtt": row.sim_cycles,
                    "wall_us_per_rtt": row.wall_us,
                    "paper": [figure.key for figure in row.paper],
                }
                for row in self.rows
            ],
            "ratios": [{**asdict(ratio), "path": RATIO_PATH} for ratio in self.ratios],
        }


def total_round_trips(rounds: int, modes: Sequence[str] | None = None) -> int:
    """What a progress bar over a whole reproduction counts to."""
    return rounds * len(ipc_bench.PATHS) * len(_modes() if modes is None else modes)


def _modes() -> tuple[str, ...]:
    return tuple(designs.DESIGNS)  # read at each call: designs are added over time


def _rows(results: dict[str, ipc_bench.IpcBenchResult]) -> tuple[Row, ...]:
    rows = [
        Row(
            mode,
            r.path,
            r.sim_cycles_per_rtt,
            r.wall_us_per_rtt,
            tuple(f for f in PAPER if f.applies_to(mode, r.path)),
        )
        for mode, result in results.items()
        for r in result.results
    ]
    for figure in PAPER:
        if not any(figure in row.paper for row in rows):
            mode = "/".join(figure.modes) if figure.modes else None
            rows.append(Row(mode, figure.path, None, None, (figure,)))
    return tuple(rows)


def _missing(figure: PaperFigure, rows: Sequence[Row]) -> str:
    """How a chart labels a figure that no measured row compares with."""
    if not figure.modes:
        return " (a yardstick for every mode)"
    if any(figure in row.paper and row.sim_cycles is not None for row in rows):
        return ""
    return f" (no {' / '.join(figure.modes)} mode yet)"


def _paper_cycles(mode: str, path: str) -> int | None:
    """The published figure (not a bound) for one mode and path, if there is one."""
    return next((f.cycles for f in PAPER if f.applies_to(mode, path) and f.relation != "<"), None)


def _ratio(results: dict[str, ipc_bench.IpcBenchResult], mode: str, versus: str) -> Ratio:
    def ours(m: str) -> float:
        return next(r.sim_cycles_per_rtt for r in results[m].results if r.path == RATIO_PATH)

    mine, theirs = _paper_cycles(mode, RATIO_PATH), _paper_cycles(versus, RATIO_PATH)
    return Ratio(
        mode,
        versus,
        ours(mode) / ours(versus),
        mine / theirs if mine is not None and theirs is not None else None,
    )


def _ratios(results: dict[str, ipc_bench.IpcBenchResult]) -> tuple[Ratio, ...]:
    ratios = []
    for versus in (BASELINE, UNDERBRIDGE):
        if versus in results:
            ratios += [_ratio(results, mode, versus) for mode in results if mode != versus]
    return tuple(ratios)


def run(
    rounds: int = ROUNDS,
    out: Path = Path("out"),
    progress: Progress | None = None,
    modes: Sequence[str] | None = None,
) -> Reproduction:
    """Benchmark every mode (default: every design in DESIGNS now), compare, write files."""
    from underbridge.bench import plots

    results: dict[str, ipc_bench.IpcBenchResult] = {}
    wall: dict[str, float] = {}
    for mode in _modes() if modes is None else modes:
        done = 0

        def advance(n: int, mode: str = mode) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(mode, n)

        started = time.perf_counter()
        results[mode] = ipc_bench.run(mode, rounds, progress=advance)
        wall[mode] = time.perf_counter() - started
        if progress is not None:  # the bench reports in steps of 1,000; finish the mode
            progress(mode, max(0, rounds * len(ipc_bench.PATHS) - done))

    rows = _rows(results)
    out.mkdir(parents=True, exist_ok=True)
    reproduction = Reproduction(
        rounds, results, wall, rows, _ratios(results), out / JSON_NAME, out / PLOT_NAME
    )
    reproduction.json_path.write_text(json.dumps(reproduction.to_json(), indent=2) + "\n")
    measured = [row for row in rows if row.sim_cycles is not None]
    plots.ipc_cycles(
        reproduction.plot_path,
        bars=[plots.Bar(f"{row.mode}\n{row.path}", row.sim_cycles or 0.0) for row in measured],
        references=[
            plots.Reference(
                f"{figure.what}: {figure.shown()}{_missing(figure, rows)}",
                figure.cycles,
                tuple(i for i, row in enumerate(measured) if figure in row.paper),
            )
            for figure in PAPER
        ],
        title=f"IPC round trip per design ({rounds:,} rounds, cycles per round trip over the loop)",
    )
    return reproduction


# -- tables for the terminal ----------------------------------------------------------


def _number(value: float | None, style: str) -> str:
    return "-" if value is None else format(value, style)


def _note(figure: PaperFigure) -> str:
    return f"[{PAPER.index(figure) + 1}]"


def comparison_table(reproduction: Reproduction) -> Table:
    """One line per measured (mode, path), then one per published figure with no mode."""
    table = Table(
        title=f"underbridge reproduce: IPC round trip "
        f"({reproduction.rounds:,} rounds, cycles per round trip over the loop)"
    )
    table.add_column("mode")
    table.add_column("path")
    table.add_column("simulated cycles / round trip", justify="right")
    table.add_column("wall us / round trip", justify="right")
    table.add_column("paper cycles", justify="right")
    for row in reproduction.rows:
        table.add_row(
            row.mode or "-",
            row.path or ("any" if row.mode else "-"),
            _number(row.sim_cycles, ",.0f"),
            _number(row.wall_us, ".1f"),
            "\n".join(f"{f.shown()} {_note(f)}" for f in row.paper),
            style="dim" if row.sim_cycles is None else None,
        )
    return table


def paper_table() -> Table:
    """The published figures the comparison's [n] notes refer to, with their sources."""
    table = Table(title="published figures")
    table.add_column("", justify="right")
    table.add_column("cycles", justify="right")
    table.add_column("figure")
    table.add_column("source")
    for figure in PAPER:
        table.add_row(_note(figure), figure.shown(), figure.what, figure.source)
    return table


def ratio_table(reproduction: Reproduction) -> Table:
    table = Table(title=f"ratios of simulated cycles, {RATIO_PATH} path")
    table.add_column("ratio")
    table.add_column("ours", justify="right")
    table.add_column("published figures", justify="right")
    for ratio in reproduction.ratios:
        table.add_row(
            f"{ratio.mode} / {ratio.versus}",
            f"{ratio.ours:.2f}x",
            _number(ratio.paper, ".2f") + ("x" if ratio.paper is not None else ""),
        )
    return table
