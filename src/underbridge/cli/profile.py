"""`underbridge profile ipc|ycsb|run`: simulated cycles by guest function.

Each subcommand runs what its namesake runs (`bench ipc`, `bench ycsb`, `run`) with the
profiler on (bench/profiler.py), then prints, per program, its hottest functions by
self cycles with their total (inclusive) cycles; `--folded FILE` writes folded stacks
("prog;f1;f2 cycles" lines), `--svg FILE` a flame graph drawn by inferno,
`--speedscope FILE` the stacks in speedscope's file format, `--json` the table as JSON.
The profile's total is checked against the run's simulated cycles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from underbridge.bench.profile_report import KERNEL
from underbridge.bench.ycsb_core import WORKLOADS as YCSB_WORKLOADS
from underbridge.cli.common import (
    MAX_COUNT,
    MAX_RECORDS,
    console,
    output_file,
    shown,
    user_errors,
)
from underbridge.cli.guests import DEFAULT_BUDGET
from underbridge.kernel.ipc.registry import DESIGNS

if TYPE_CHECKING:
    from underbridge.bench.profile_targets import Target

IPC_PATHS = ("app-server", "server-server")


def _outputs(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every profile subcommand shares."""
    for option in reversed(
        (
            click.option(
                "--top",
                type=click.IntRange(min=1, max=1000),
                default=10,
                show_default=True,
                help="Functions shown per program.",
            ),
            click.option(
                "--folded",
                type=click.Path(dir_okay=False, path_type=Path),
                callback=output_file,
                help='Write folded stacks here ("prog;f1;f2 cycles" per line).',
            ),
            click.option(
                "--svg",
                type=click.Path(dir_okay=False, path_type=Path),
                callback=output_file,
                help="Write a flame graph here (SVG, drawn by inferno).",
            ),
            click.option(
                "--speedscope",
                type=click.Path(dir_okay=False, path_type=Path),
                callback=output_file,
                help="Write the stacks in speedscope's JSON file format here.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the table as JSON."),
        )
    ):
        command = option(command)
    return command


@click.group()
def profile() -> None:
    """Simulated cycles by guest function: tables, folded stacks, flame graphs.

    \b
    Examples:
      underbridge profile ipc --mode underbridge --rounds 100
      underbridge profile ycsb --records 50 --ops 50 --folded y.folded --svg y.svg
      underbridge profile run hello
    """


@profile.command("ipc")
@click.option("--mode", type=click.Choice(DESIGNS), default="sel4", show_default=True)
@click.option("--path", type=click.Choice(IPC_PATHS), default="app-server", show_default=True)
@click.option("--rounds", type=click.IntRange(min=3, max=MAX_COUNT), default=100, show_default=True)
@_outputs
@user_errors
def profile_ipc(mode: str, path: str, rounds: int, **outputs: Any) -> None:
    """The IPC benchmark (pingpong calling echo), one path."""
    from underbridge.bench.profile_targets import profile_ipc as run_target

    _report(run_target(mode, path, rounds), **outputs)


@profile.command("ycsb")
@click.option("--mode", type=click.Choice(DESIGNS), default="underbridge", show_default=True)
@click.option(
    "--records", type=click.IntRange(min=1, max=MAX_RECORDS), default=50, show_default=True
)
@click.option("--ops", type=click.IntRange(min=1, max=MAX_COUNT), default=50, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=1, show_default=True)
@click.option(
    "--workload",
    type=click.Choice(list(YCSB_WORKLOADS), case_sensitive=False),
    default="a",
    show_default=True,
)
@_outputs
@user_errors
def profile_ycsb(
    mode: str, records: int, ops: int, seed: int, workload: str, **outputs: Any
) -> None:
    """SQLite under YCSB with the fs and RAM-disk servers (loading included)."""
    from underbridge.bench.profile_targets import profile_ycsb as run_target

    _report(run_target(mode, records, ops, seed, workload.lower()), **outputs)


@profile.command("run")
@click.argument("program", required=False)
@click.argument("args", nargs=-1)
@click.option(
    "--c",
    "c_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Build and run your own C file instead of a program from guest/apps.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=0),
    default=DEFAULT_BUDGET,
    show_default=True,
    help="Stop after this many simulated cycles; 0: no limit.",
)
@_outputs
@user_errors
def profile_run(
    program: str | None, args: tuple[str, ...], c_file: Path | None, budget: int, **outputs: Any
) -> None:
    """One guest program in ring 3, as `underbridge run` runs it."""
    from underbridge.bench.profile_targets import profile_program
    from underbridge.cli.guests import guest_to_run

    elf, argv, name = guest_to_run(program, args, c_file, command="profile run")
    _report(profile_program(elf, argv, name, budget), **outputs)


def _report(
    target: Target,
    *,
    top: int,
    folded: Path | None,
    svg: Path | None,
    speedscope: Path | None,
    as_json: bool,
) -> None:
    profile = target.profile
    if profile.total != target.run_cycles or profile.unattributed:
        raise RuntimeError(
            f"profile total {profile.total:,} (unattributed {profile.unattributed:,}) "
            f"!= the run's {target.run_cycles:,} simulated cycles"
        )
    if folded is not None:
        profile.write_folded(folded)
    if svg is not None:
        svg.write_text(profile.flame_graph_svg())
    if speedscope is not None:
        speedscope.write_text(json.dumps(profile.speedscope()))
    if as_json:
        click.echo(json.dumps({**profile.to_json(top), "summary": target.summary}, indent=2))
        return
    console.print(
        f"[bold]{escape(profile.title)}[/]: {profile.total:,} simulated cycles in all "
        f"(= the run's), {escape(target.summary)}"
    )
    for program, cycles in profile.programs().items():
        console.print(_program_table(target, program, cycles, top))
    for kind, path in (("folded stacks", folded), ("flame graph", svg), ("speedscope", speedscope)):
        if path is not None:
            console.print(f"[dim]{kind}: {escape(shown(str(path)))}[/]")


def _program_table(target: Target, program: str, cycles: int, top: int) -> Table:
    total = target.profile.total or 1
    what = "charged by the kernel or run in its gates" if program == KERNEL else "in its code"
    table = Table(
        title=f"{escape(program)}: {cycles:,} cycles {what} ({cycles / total:.1%})",
        title_justify="left",
    )
    table.add_column("function")
    table.add_column("self", justify="right")
    table.add_column("self %", justify="right")
    table.add_column("total", justify="right")
    table.add_column("total %", justify="right")
    for function, counted in target.profile.top(program, top):
        table.add_row(
            escape(function),
            f"{counted.self_cycles:,}",
            f"{counted.self_cycles / total:.1%}",
            f"{counted.total_cycles:,}",
            f"{counted.total_cycles / total:.1%}",
        )
    return table
