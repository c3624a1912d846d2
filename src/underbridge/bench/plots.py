"""Charts of benchmark results, drawn to PNG files with matplotlib's Agg backend.

No display and no pyplot global state: each chart is its own `Figure`, rendered by an
Agg canvas, so drawing is safe in tests and on machines without a screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

LOG_SPREAD = 20.0  # beyond this max/min ratio the cycle axis is logarithmic
BAR_COLOR = "#4c72b0"
REFERENCE_COLORS = (
    "#c44e52",
    "#dd8452",
    "#55a868",
    "#8172b3",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
)


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    cycles: float


@dataclass(frozen=True, slots=True)
class Reference:
    """A published figure: a marker over the bars it applies to, else a line across."""

    label: str
    cycles: float
    bars: tuple[int, ...] = ()


def ipc_cycles(
    path: Path, bars: Sequence[Bar], references: Sequence[Reference], title: str
) -> Path:
    """Simulated cycles per round trip as bars, published figures as markers; a PNG."""
    values = [b.cycles for b in bars] + [r.cycles for r in references]
    log = bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPREAD
    width = max(8.0, 1.4 * len(bars) + 4.0)
    figure = Figure(figsize=(width, 6.5 + 0.3 * len(references)), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(bars))
    drawn = axes.bar(
        positions,
        [b.cycles for b in bars],
        width=0.6,
        color=BAR_COLOR,
        label="ours: simulated cycles per round trip",
        zorder=2,
    )
    axes.bar_label(drawn, labels=[f"{b.cycles:,.0f}" for b in bars], padding=3, fontsize=9)
    axes.set_xticks(list(positions), [b.label for b in bars])
    axes.set_xlim(-0.6, max(len(bars), 1) - 0.4)

    for reference, color in zip(references, REFERENCE_COLORS * 4, strict=False):
        if reference.bars:
            for i, bar in enumerate(reference.bars):
                axes.hlines(
                    reference.cycles,
                    bar - 0.42,
                    bar + 0.42,
                    colors=color,
                    linewidth=3,
                    zorder=3,
                    label=f"paper: {reference.label}" if i == 0 else None,
                )
        else:
            axes.axhline(
                reference.cycles,
                color=color,
                linestyle="--",
                linewidth=1.5,
                zorder=1,
                label=f"paper: {reference.label}",
            )
        axes.annotate(
            f"{reference.cycles:,.0f}",
            xy=(1.0, reference.cycles),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=color,
        )

    if log:
        axes.set_yscale("log")
        axes.set_ylim(min(values) / 2, max(values) * 3)
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_minor_formatter(NullFormatter())
    else:
        axes.set_ylim(0, max(values, default=1) * 1.2)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:,.0f}"))
    axes.grid(axis="y", which="major", alpha=0.3, zorder=0)
    axes.set_title(title)
    axes.set_xlabel("IPC design (mode) and path")
    axes.set_ylabel("simulated cycles per round trip" + (" (log scale)" if log else ""))
    handles, labels = axes.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("ours"))
    axes.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        fontsize=9,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


BREAKDOWN_COLORS = {
    "application": "#4c72b0",
    "ipc": "#c44e52",
    "kernel": "#8172b3",
    "server": "#55a868",
}


@dataclass(frozen=True, slots=True)
class ThroughputBar:
    mode: str
    ops_per_sec: float
    speedup: float | None  # over the baseline mode
    breakdown: dict[str, float]  # simulated cycles per operation by category


def ycsb_throughput(path: Path, bars: Sequence[ThroughputBar], title: str, baseline: str) -> Path:
    """Left: simulated throughput per mode with its speedup; right: cycles per operation
    stacked by category. A PNG."""
    figure = Figure(figsize=(12, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    positions = list(range(len(bars)))
    drawn = left.bar(positions, [b.ops_per_sec for b in bars], width=0.6, color=BAR_COLOR, zorder=2)
    left.bar_label(
        drawn,
        padding=3,
        fontsize=9,
        labels=[
            f"{b.ops_per_sec:,.0f}" + ("" if b.speedup is None else f"\n{b.speedup:.2f}x")
            for b in bars
        ],
    )
    left.set_xticks(positions, [b.mode for b in bars])
    left.set_ylim(0, max((b.ops_per_sec for b in bars), default=1) * 1.25)
    left.set_ylabel("operations per simulated second (2.0 GHz)")
    left.set_title(f"throughput, and speedup over {baseline}")
    left.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:,.0f}"))
    left.grid(axis="y", alpha=0.3, zorder=0)

    bottoms = [0.0] * len(bars)
    for category, color in BREAKDOWN_COLORS.items():
        heights = [b.breakdown.get(category, 0.0) for b in bars]
        right.bar(
            positions, heights, bottom=bottoms, width=0.6, color=color, label=category, zorder=2
        )
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    right.set_xticks(positions, [b.mode for b in bars])
    right.set_ylabel("simulated cycles per operation")
    right.set_title("where an operation's cycles go")
    right.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:,.0f}"))
    right.grid(axis="y", alpha=0.3, zorder=0)
    right.legend(fontsize=9)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
