"""`underbridge bench ...` and `underbridge reproduce`: measurements, and the paper's figures.

Each command prints a table, or one JSON object with --json; progress goes to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from underbridge.bench.ycsb_core import WORKLOADS as YCSB_WORKLOADS
from underbridge.cli.common import (
    MAX_COUNT,
    MAX_RECORDS,
    NO_ACCOUNTING_HELP,
    console,
    errors,
    finite,
    output_directory,
    output_file,
    user_errors,
)
from underbridge.cli.tracing import trace_options, traced
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.placement import POLICIES

PLACEMENTS = ("sel4", *POLICIES, "oracle")  # bench/migrate_workload.py's, without its imports


@click.group()
def bench() -> None:
    """Measurements: wall time and simulated cycles."""


@bench.command("ipc")
@click.option(
    "--mode",
    type=click.Choice(DESIGNS),
    default="sel4",
    show_default=True,
    help="The IPC design the kernel uses.",
)
@click.option(
    "--rounds", type=click.IntRange(min=3, max=MAX_COUNT), default=10_000, show_default=True
)
@click.option("--no-accounting", is_flag=True, help=NO_ACCOUNTING_HELP)
@trace_options
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_ipc(
    mode: str,
    rounds: int,
    no_accounting: bool,
    trace_file: Path | None,
    trace_limit: int,
    as_json: bool,
) -> None:
    """IPC round trips between the echo server and the pingpong client, per path
    (traced: machine #1 runs the app-server path, #2 the server-server path)."""
    from rich.progress import Progress

    from underbridge.bench import ipc as ipc_bench

    with (
        traced(trace_file, trace_limit, accounting=not no_accounting),
        Progress(console=errors, transient=True, disable=as_json) as bar,
    ):
        task = bar.add_task(f"{mode} round trips", total=rounds * len(ipc_bench.PATHS))
        result = ipc_bench.run(
            mode, rounds, progress=lambda n: bar.advance(task, n), accounting=not no_accounting
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"underbridge bench ipc --mode {mode} ({rounds:,} rounds)")
    table.add_column("path")
    table.add_column("simulated cycles / round trip", justify="right")
    table.add_column("wall us / round trip", justify="right")
    for row in result.results:
        cycles = "-" if row.sim_cycles_per_rtt is None else f"{row.sim_cycles_per_rtt:,.0f}"
        table.add_row(row.path, cycles, f"{row.wall_us_per_rtt:.1f}")
    console.print(table)
    for row in result.results if not no_accounting else ():
        events = ", ".join(
            f"{name} x{count:g}" for name, count in sorted((row.events_per_rtt or {}).items())
        )
        console.print(f"[dim]{row.path} hardware events per round trip: {events}[/]")


@bench.command("ycsb")
@click.option(
    "--mode",
    type=click.Choice(DESIGNS),
    default="underbridge",
    show_default=True,
    help="The IPC design the kernel uses.",
)
@click.option(
    "--records",
    type=click.IntRange(min=1, max=MAX_RECORDS),
    default=1_000,
    show_default=True,
    help="Records loaded first (the RAM disk holds about 2,000).",
)
@click.option(
    "--ops",
    type=click.IntRange(min=1, max=MAX_COUNT),
    default=1_000,
    show_default=True,
    help="Operations after the load.",
)
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=1, show_default=True)
@click.option(
    "--workload",
    type=click.Choice(list(YCSB_WORKLOADS), case_sensitive=False),
    default="a",
    show_default=True,
    help="YCSB core workload: a 50/50 read/update, b 95/5 read/update, c read only, "
    "d read latest + 5% inserts, e short scans + 5% inserts, f 50/50 read/read-modify-write.",
)
@click.option(
    "--db-out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=output_file,
    help="Copy the database file out of the file system to this host path.",
)
@click.option(
    "--migrate-at",
    type=click.IntRange(min=0),
    help="Start fs and ramdisk in user space; move both into kernel space after N operations.",
)
@click.option(
    "--migrate-out-at",
    type=click.IntRange(min=0),
    help="Start fs and ramdisk in kernel space; move both out after N operations.",
)
@click.option("--no-accounting", is_flag=True, help=NO_ACCOUNTING_HELP)
@trace_options
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_ycsb(
    mode: str,
    records: int,
    ops: int,
    seed: int,
    workload: str,
    db_out: Path | None,
    migrate_at: int | None,
    migrate_out_at: int | None,
    no_accounting: bool,
    trace_file: Path | None,
    trace_limit: int,
    as_json: bool,
) -> None:
    """SQLite under a YCSB core workload inside the microkernel, file operations over IPC."""
    from rich.progress import Progress

    from underbridge.bench import ycsb

    with (
        traced(trace_file, trace_limit, accounting=not no_accounting),
        Progress(console=errors, transient=True, disable=as_json) as bar,
    ):
        task = bar.add_task(f"{mode}: records loaded + operations", total=records + ops)
        result = ycsb.run(
            mode,
            records,
            ops,
            seed,
            workload,
            db_out=db_out,
            progress=lambda done, total: bar.update(task, completed=done),
            accounting=not no_accounting,
            migrate_at=migrate_at,
            migrate_out_at=migrate_out_at,
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    console.print(ycsb.result_table(result))
    if db_out is not None:
        console.print(f"[dim]wrote {escape(str(db_out))}[/]")


@bench.command("deprivilege")
@click.option(
    "--rounds", type=click.IntRange(min=1, max=MAX_COUNT), default=10_000, show_default=True
)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_deprivilege(rounds: int, as_json: bool) -> None:
    """A trapped (VM exit) port write against a rewritten one, in a kernel-space driver."""
    from underbridge.bench import deprivilege

    with console.status("measuring ...", spinner="dots"):
        result = deprivilege.run(rounds)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"underbridge bench deprivilege ({rounds:,} port writes)")
    table.add_column("way")
    table.add_column("simulated cycles / write", justify="right")
    table.add_column("wall us / write", justify="right")
    table.add_column("how")
    for row in result.results:
        table.add_row(
            row.way, f"{row.sim_cycles_per_op:,.0f}", f"{row.wall_us_per_op:.1f}", row.how
        )
    console.print(table)


@bench.command("pku-shared")
@click.option("--apps", type=click.IntRange(min=1, max=8), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_pku_shared(apps: int, as_json: bool) -> None:
    """The drawbacks of pku-shared (servers mapped into every application), counted."""
    from underbridge.bench import pku_shared

    report = pku_shared.measure(apps)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        console.print(pku_shared.report_table(report))


@bench.command("migrate")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(PLACEMENTS),
    help="A placement to run the workload under (repeatable; default: every one).",
)
@click.option("--servers", type=click.IntRange(min=16, max=64), default=24, show_default=True)
@click.option("--phases", type=click.IntRange(min=1, max=64), default=4, show_default=True)
@click.option(
    "--calls",
    type=click.IntRange(min=16, max=MAX_COUNT),
    default=4_000,
    show_default=True,
    help="Calls per phase.",
)
@click.option("--quick", is_flag=True, help="One size and one connection count for part (a).")
@click.option("--json", "as_json", is_flag=True)
@trace_options
@user_errors
def bench_migrate(
    policies: tuple[str, ...],
    servers: int,
    phases: int,
    calls: int,
    quick: bool,
    as_json: bool,
    trace_file: Path | None,
    trace_limit: int,
) -> None:
    """Live migration: its cost each way, and placement policies on a shifting workload
    (traced: one machine per measured migration and per placement, in that order)."""
    from underbridge.bench import migrate as migrate_bench
    from underbridge.bench.migrate_workload import Workload

    with (
        traced(trace_file, trace_limit),
        console.status("measuring ...", spinner="dots") as status,
    ):
        result = migrate_bench.run(
            sizes=(0,) if quick else migrate_bench.SIZES,
            connections=(1,) if quick else migrate_bench.CONNECTIONS,
            placements=policies or PLACEMENTS,
            workload=Workload(servers, phases, calls),
            progress=lambda what: status.update(f"measuring {what} ..."),
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for table in migrate_bench.report_tables(result):
        console.print(table)


@bench.command("machine")
@click.option(
    "--scale",
    type=click.FloatRange(0.001, 100.0),
    default=1.0,
    show_default=True,
    callback=finite,
    help="Multiply the number of iterations (smaller is faster, noisier).",
)
@click.option("--json", "as_json", is_flag=True)
def bench_machine(scale: float, as_json: bool) -> None:
    """Wall-time cost of the emulated machine's basic operations."""
    from underbridge.bench import machine as machine_bench

    with console.status("measuring the machine ...", spinner="dots"):
        result = machine_bench.run(scale)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title="underbridge bench machine (wall time on this host)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row("guest MIPS, accounting on", f"{result.mips_accounting_on:.1f}")
    table.add_row("guest MIPS, accounting off", f"{result.mips_accounting_off:.1f}")
    table.add_row("syscall round trip into Python", f"{result.syscall_roundtrip_wall_us:.2f} us")
    table.add_row("wrpkru pair (two domain switches)", f"{result.wrpkru_pair_wall_us:.2f} us")
    table.add_row("loop simulated cycles", f"{result.loop_sim_cycles:,}")
    table.add_row("floor: wrpkru pair, no hook", f"{result.wrpkru_pair_floor_us:.2f} us")
    table.add_row("floor: syscall hook + context restore", f"{result.syscall_floor_us:.2f} us")
    console.print(table)
    paths = Table(title="IPC round trips against their floors (accounting on)")
    for column in ("design", "path", "wall us/rtt", "entries", "floor us", "x floor"):
        paths.add_column(column, justify="left" if column in ("design", "path") else "right")
    for row in result.ipc:
        paths.add_row(
            row.mode,
            row.path,
            f"{row.wall_us_per_rtt:.1f}",
            str(row.kernel_entries),
            f"{row.floor_us:.2f}",
            f"{row.ratio:.1f}",
        )
    console.print(paths)


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help="200 rounds per path instead of 2,000, and "
    "YCSB-A with 200 records and 200 operations instead of 1,000 each.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    callback=output_directory,
    help="Directory for the JSON files and charts (created).",
)
@click.option(
    "--trace-dir",
    type=click.Path(file_okay=False, path_type=Path),
    callback=lambda ctx, param, path: None if path is None else output_directory(ctx, param, path),
    help="Also write DIR/trace-MODE.json per design: one round trip on each path, as a "
    "Chrome trace (ui.perfetto.dev).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON instead of the table.")
@user_errors
def reproduce(quick: bool, out_dir: Path, trace_dir: Path | None, as_json: bool) -> None:
    """Every IPC design's round trip beside the published figures, and SQLite under YCSB-A.

    \b
    Writes OUT/ipc.json (every result, the published figures, the ratios),
    OUT/ipc_cycles.png (simulated cycles per round trip, published figures marked),
    OUT/ycsb.json and OUT/ycsb_throughput.png (SQLite under YCSB-A per mode).
    """
    from rich.progress import Progress

    from underbridge.bench import reproduce as reproduction
    from underbridge.bench import reproduce_ycsb as ycsb_part

    rounds = reproduction.QUICK_ROUNDS if quick else reproduction.ROUNDS
    records, ops = (
        (ycsb_part.QUICK_RECORDS, ycsb_part.QUICK_OPS)
        if quick
        else (ycsb_part.RECORDS, ycsb_part.OPS)
    )
    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task("IPC round trips", total=reproduction.total_round_trips(rounds))
        result = reproduction.run(
            rounds,
            out_dir,
            progress=lambda mode, n: bar.update(task, advance=n, description=f"{mode} round trips"),
        )
        ycsb_task = bar.add_task("YCSB-A", total=records + ops)
        ycsb_result = ycsb_part.run(
            records,
            ops,
            out_dir,
            progress=lambda mode, done, total: bar.update(
                ycsb_task, completed=done, total=total, description=f"YCSB-A under {mode}"
            ),
        )
    traces: list[Path] = []
    if trace_dir is not None:
        from underbridge.bench import round_trip_trace

        traces = [round_trip_trace.write(mode, trace_dir) for mode in DESIGNS]
    if as_json:
        click.echo(json.dumps({"ipc": result.to_json(), "ycsb": ycsb_result.to_json()}, indent=2))
        return
    console.print(reproduction.comparison_table(result))
    console.print(reproduction.paper_table())
    console.print(reproduction.ratio_table(result))
    console.print(ycsb_part.throughput_table(ycsb_result))
    console.print(ycsb_part.breakdown_table(ycsb_result))
    written = [result.json_path, result.plot_path, ycsb_result.json_path, ycsb_result.plot_path]
    written += traces
    console.print(f"[dim]wrote {', '.join(escape(str(path)) for path in written)}[/]")
