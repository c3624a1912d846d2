"""`underbridge bench crash`: YCSB-A while a storage server is killed at seeded instants
(underbridge.bench.crash), then the durability checks. Exit status 1 if any check
failed (a lost committed transaction, a failed one present, integrity, the fs check)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from underbridge.cli.common import MAX_RECORDS, console, errors, user_errors
from underbridge.cli.measure import bench
from underbridge.cli.tracing import trace_options, traced
from underbridge.kernel.ipc.registry import DESIGNS

TARGETS = ("fs", "ramdisk", "both")  # bench/crash.py's, kept here so --help stays light


@bench.command("crash")
@click.option("--injections", type=click.IntRange(min=0, max=1_000_000), required=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=1, show_default=True)
@click.option("--target", type=click.Choice(TARGETS), default="fs", show_default=True)
@click.option(
    "--mode",
    type=click.Choice(DESIGNS),
    default="sel4",
    show_default=True,
    help="The IPC design the kernel uses.",
)
@click.option(
    "--records", type=click.IntRange(min=1, max=MAX_RECORDS), default=100, show_default=True
)
@click.option("--ops", type=click.IntRange(min=1, max=10_000_000), default=400, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@trace_options
@user_errors
def bench_crash(
    injections: int,
    seed: int,
    target: str,
    mode: str,
    records: int,
    ops: int,
    as_json: bool,
    trace_file: Path | None,
    trace_limit: int,
) -> None:
    """Kill the fs server, the ramdisk or each in turn at INJECTIONS seeded instants of a
    YCSB-A run; check no committed transaction was lost and the disk checks clean
    (traced: machine #1 measures the run's length, #2 is the run with its kills)."""
    from rich.progress import Progress

    from underbridge.bench.crash import run_crash

    with (
        traced(trace_file, trace_limit),
        Progress(console=errors, transient=True, disable=as_json) as bar,
    ):
        task = bar.add_task("injections", total=injections)
        result = run_crash(
            mode,
            injections,
            seed,
            target,
            records,
            ops,
            progress=lambda done: bar.update(task, completed=done),
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        table = Table(title=f"underbridge bench crash --mode {mode} --target {target}")
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in result.to_json().items():
            table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
        console.print(table)
    if not result.ok:
        raise SystemExit(1)
