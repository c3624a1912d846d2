"""The `underbridge` command: run guests, demos and benchmarks.

Human output by default, `--json` for scripts. A UserError (bad ELF, missing gcc, a
source that does not compile) prints one line and a hint and exits 2; nothing else
is caught, so a kernel bug shows its traceback.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from underbridge.errors import UserError
from underbridge.kernel.ipc import DESIGNS

if TYPE_CHECKING:  # commands import what they run, so `--help` loads no emulator
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

F = TypeVar("F", bound=Callable[..., Any])
RUN_BASE = 0x40_0000
EXIT_USER_ERROR = 2
NO_ACCOUNTING_HELP = "Wall time only, no simulated cycles: shows what accounting costs."
# `run`'s default budget, in simulated cycles: far above what our guests need (SQLite,
# the largest, spends 0.16 billion on YCSB-A's 1,000 records and 1,000 operations under
# sel4), and small enough that a guest spinning forever is stopped in wall time: a few
# minutes of typical code, about half an hour of a one-instruction loop (the slowest
# case: a block hook per instruction).
DEFAULT_BUDGET = 1_000_000_000
EXIT_BUDGET = 124  # as timeout(1) exits when its command ran out of time
EXIT_DEADLOCK = 125
MAX_COUNT = 1_000_000_000  # rounds and operations: more would run for days

console = Console(soft_wrap=True, highlight=False)
errors = Console(stderr=True, soft_wrap=True, highlight=False)


def shown(text: str) -> str:
    """Text fit to print: a host name or argument that was not UTF-8 (which Python keeps
    as surrogates) is shown with replacement characters instead of failing to print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def user_errors(command: F) -> F:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            errors.print(f"[bold red]error:[/] {escape(shown(str(error)))}")
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]


def finite(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """A click callback: FloatRange lets nan through (every comparison with it is false)."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def writable_directory(directory: Path) -> None:
    """Fail now, before a long run, if no file can be created in `directory`."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise click.BadParameter(f"cannot write in {shown(str(directory))}: "
                                 f"{error.strerror}") from None


def output_directory(_ctx: click.Context, _param: click.Parameter, path: Path) -> Path:
    """A click callback: create the output directory now and check it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.BadParameter(f"cannot create {shown(str(path))}: {error.strerror}"
                                 ) from None
    writable_directory(path)
    return path


def output_file(_ctx: click.Context, _param: click.Parameter, path: Path | None
                ) -> Path | None:
    """A click callback: the file's directory must exist and be writable."""
    if path is not None:
        if not path.parent.is_dir():
            raise click.BadParameter(f"no directory {shown(str(path.parent))}")
        writable_directory(path.parent)
    return path


@click.group()
@click.version_option(package_name="underbridge")
def main() -> None:
    """UnderBridge: a microkernel with servers in kernel space, isolated by protection keys."""


# -- run ----------------------------------------------------------------------------


def _outcome(process: CapGroup, budget_spent: bool) -> str:
    """How `run` ended: the process's state, or "budget" or "deadlock" if it still runs."""
    if not process.running:
        return process.state.value
    return "budget" if budget_spent else "deadlock"  # else some thread would be ready


def _exit_code(process: CapGroup, outcome: str) -> int:
    """The guest's exit status; never 0 for a fault, a spent budget or a deadlock."""
    if outcome == "budget":
        return EXIT_BUDGET
    if outcome == "deadlock":
        return EXIT_DEADLOCK
    from underbridge.kernel.objects.capgroup import GroupState

    if process.state is GroupState.FAULTED:  # 128 + vector, and 255 from vector 127 on
        return min(128 + (process.fault.vector if process.fault else 0), 255)
    return (process.exit_status or 0) & 0xFF


def _waits(threads: list[Thread]) -> str:
    return "; ".join(f"{shown(t.name)} waits on {t.waiting_on or 'nothing'}" for t in threads)


@main.command()
@click.argument("program", required=False)
@click.argument("args", nargs=-1)
@click.option("--c", "c_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Build and run your own C file instead of a program from guest/apps.")
@click.option("--no-accounting", is_flag=True, help="Skip simulated-cycle accounting (faster).")
@click.option("--budget", type=click.IntRange(min=0), default=DEFAULT_BUDGET, show_default=True,
              help="Stop the guest after this many simulated cycles (instructions with "
                   "--no-accounting); 0: no limit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def run(program: str | None, args: tuple[str, ...], c_file: Path | None, no_accounting: bool,
        budget: int, as_json: bool) -> None:
    """Build a guest C program and run it in ring 3.

    \b
    Examples:
      underbridge run hello
      underbridge run --c mine.c first-arg second-arg
    """
    from underbridge.guestbuild.toolchain import build_program
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.cpu import Machine

    if program is None and c_file is None:
        raise UserError("name a program from guest/apps or give --c FILE.c",
                        hint="underbridge run hello   or   underbridge run --c mine.c ARGS")
    if c_file is not None and program is not None:
        args = (program, *args)  # with --c, every positional word is an argument
    source: Path | str = c_file if c_file is not None else str(program)
    elf = build_program(source, base=RUN_BASE)
    stem = Path(source).stem if c_file is not None else str(program)
    name = shown(stem)  # for reports; argv[0] keeps the bytes it was given

    def stream(_process: CapGroup, data: bytes) -> None:
        if not as_json:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()

    machine = Machine(accounting=not no_accounting)
    kernel = Kernel(machine, console=stream)
    process = kernel.spawn(elf, [stem, *args], name=name)

    def budget_spent() -> bool:  # checked between kernel events, a quantum apart at most
        return budget > 0 and machine.clock() >= budget

    started = time.perf_counter()
    kernel.run(until=budget_spent)
    wall = time.perf_counter() - started
    outcome = _outcome(process, budget_spent())
    blocked = kernel.blocked() if outcome == "deadlock" else []
    unit = "instructions" if no_accounting else "cycles"
    tally = machine.tally()
    report = {
        "program": name,
        "status": outcome,
        "exit_status": process.exit_status,
        "budget": budget,
        "blocked": [{"thread": shown(t.name), "waiting_on": t.waiting_on} for t in blocked],
        "fault": process.fault.to_json() if process.fault else None,
        "output": bytes(process.console).decode(errors="replace"),
        "guest_instructions": tally.instructions if not no_accounting else None,
        "sim_cycles": tally.cycles if not no_accounting else None,
        "events": dict(sorted(tally.events.items())),
        "wall_seconds": wall,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        if process.fault is not None:
            console.print(f"[bold red]{escape(name)} terminated:[/] "
                          f"{escape(process.fault.describe())}")
        elif outcome == "budget":
            console.print(f"[bold red]stopped:[/] budget of {budget:,} {unit} spent "
                          "(--budget N to change it, 0 for none)")
        elif outcome == "deadlock":
            console.print(f"[bold red]deadlock:[/] no thread can run any more; "
                          f"{escape(_waits(blocked))}")
        counts = ("accounting off" if no_accounting else
                  f"{tally.instructions:,} guest instructions, {tally.cycles:,} simulated cycles")
        status = f" (status {process.exit_status})" if outcome == "exited" else ""
        console.print(f"[dim]{escape(name)}: {outcome}{status}, {counts}, "
                      f"{wall * 1e3:.1f} ms wall[/]")
    sys.exit(_exit_code(process, outcome))


# -- demo ---------------------------------------------------------------------------


@main.group()
def demo() -> None:
    """Guided runs that show one hardware fact each."""


@demo.command("pku")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def demo_pku(as_json: bool) -> None:
    """Two ring-0 guests, one page table, one protection key each."""
    from underbridge.demos.pku import run_pku_demo

    result = run_pku_demo()
    guests = [*result.victims, *result.attackers, result.survivor]
    if as_json:
        click.echo(json.dumps({
            "isolation_held": result.isolation_held,
            "guests": [{"name": g.name, "status": g.state.value,
                        "output": bytes(g.console).decode(errors="replace"),
                        "fault": g.fault.to_json() if g.fault else None} for g in guests],
        }, indent=2))
    else:
        for guest in guests:
            console.rule(escape(guest.name), style="dim")
            sys.stdout.write(bytes(guest.console).decode(errors="replace"))
            if guest.fault is not None:
                console.print(f"[bold yellow]  -> {escape(guest.fault.describe())}[/]")
            else:
                console.print(f"[green]  -> {guest.state.value}[/]")
        verdict = ("[bold green]isolation held[/]: each guest reached its own memory; each "
                   "cross-domain read raised a protection-key fault; the machine runs on."
                   if result.isolation_held else "[bold red]isolation FAILED[/]")
        console.print(verdict)
    sys.exit(0 if result.isolation_held else 1)


# -- scan ---------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def scan(file: Path, as_json: bool) -> None:
    """Find every wrpkru and XRSTOR in a binary's code, at every byte offset.

    Also lists the aligned privileged instructions. Exits 1 if the code holds a wrpkru
    or an XRSTOR-family instruction anywhere (it may not run in kernel space as it is).
    """
    from underbridge.bridge.scan import format_table, scan_elf

    report = scan_elf(file)
    click.echo(report.to_json() if as_json else format_table(report))
    sys.exit(1 if report.pkru_writers else 0)


# -- bench --------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Measurements: wall time and simulated cycles."""


@bench.command("ipc")
@click.option("--mode", type=click.Choice(DESIGNS), default="sel4", show_default=True,
              help="The IPC design the kernel uses.")
@click.option("--rounds", type=click.IntRange(min=3, max=MAX_COUNT), default=10_000,
              show_default=True)
@click.option("--no-accounting", is_flag=True, help=NO_ACCOUNTING_HELP)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_ipc(mode: str, rounds: int, no_accounting: bool, as_json: bool) -> None:
    """IPC round trips between the echo server and the pingpong client, per path."""
    from rich.progress import Progress

    from underbridge.bench import ipc as ipc_bench

    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{mode} round trips", total=rounds * len(ipc_bench.PATHS))
        result = ipc_bench.run(mode, rounds, progress=lambda n: bar.advance(task, n),
                               accounting=not no_accounting)
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
        events = ", ".join(f"{name} x{count:g}"
                           for name, count in sorted((row.events_per_rtt or {}).items()))
        console.print(f"[dim]{row.path} hardware events per round trip: {events}[/]")


@bench.command("ycsb")
@click.option("--mode", type=click.Choice(DESIGNS), default="underbridge", show_default=True,
              help="The IPC design the kernel uses.")
@click.option("--records", type=click.IntRange(min=1, max=2_000), default=1_000,
              show_default=True, help="Records loaded first (the RAM disk holds about 2,000).")
@click.option("--ops", type=click.IntRange(min=1, max=MAX_COUNT), default=1_000, show_default=True,
              help="YCSB-A operations after the load (50% reads, 50% updates).")
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=1, show_default=True)
@click.option("--db-out", type=click.Path(dir_okay=False, path_type=Path), callback=output_file,
              help="Copy the database file out of the file system to this host path.")
@click.option("--no-accounting", is_flag=True, help=NO_ACCOUNTING_HELP)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_ycsb(mode: str, records: int, ops: int, seed: int, db_out: Path | None,
               no_accounting: bool, as_json: bool) -> None:
    """SQLite under YCSB workload A inside the microkernel, file operations over IPC."""
    from rich.progress import Progress

    from underbridge.bench import ycsb

    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{mode}: records loaded + operations", total=records + ops)
        result = ycsb.run(mode, records, ops, seed, db_out=db_out,
                          progress=lambda done, total: bar.update(task, completed=done),
                          accounting=not no_accounting)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    console.print(ycsb.result_table(result))
    if db_out is not None:
        console.print(f"[dim]wrote {escape(str(db_out))}[/]")


@bench.command("deprivilege")
@click.option("--rounds", type=click.IntRange(min=1, max=MAX_COUNT), default=10_000,
              show_default=True)
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
        table.add_row(row.way, f"{row.sim_cycles_per_op:,.0f}", f"{row.wall_us_per_op:.1f}",
                      row.how)
    console.print(table)


@bench.command("machine")
@click.option("--scale", type=click.FloatRange(0.001, 100.0), default=1.0, show_default=True,
              callback=finite,
              help="Multiply the number of iterations (smaller is faster, noisier).")
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
        paths.add_row(row.mode, row.path, f"{row.wall_us_per_rtt:.1f}", str(row.kernel_entries),
                      f"{row.floor_us:.2f}", f"{row.ratio:.1f}")
    console.print(paths)


# -- reproduce ----------------------------------------------------------------------


@main.command()
@click.option("--quick", is_flag=True, help="200 rounds per path instead of 2,000, and "
              "YCSB-A with 200 records and 200 operations instead of 1,000 each.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True, callback=output_directory,
              help="Directory for the JSON files and charts (created).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON instead of the table.")
@user_errors
def reproduce(quick: bool, out_dir: Path, as_json: bool) -> None:
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
    records, ops = ((ycsb_part.QUICK_RECORDS, ycsb_part.QUICK_OPS) if quick
                    else (ycsb_part.RECORDS, ycsb_part.OPS))
    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task("IPC round trips", total=reproduction.total_round_trips(rounds))
        result = reproduction.run(rounds, out_dir, progress=lambda mode, n: bar.update(
            task, advance=n, description=f"{mode} round trips"))
        ycsb_task = bar.add_task("YCSB-A", total=records + ops)
        ycsb_result = ycsb_part.run(records, ops, out_dir, progress=lambda mode, done, total:
                                    bar.update(ycsb_task, completed=done, total=total,
                                               description=f"YCSB-A under {mode}"))
    if as_json:
        click.echo(json.dumps({"ipc": result.to_json(), "ycsb": ycsb_result.to_json()},
                              indent=2))
        return
    console.print(reproduction.comparison_table(result))
    console.print(reproduction.paper_table())
    console.print(reproduction.ratio_table(result))
    console.print(ycsb_part.throughput_table(ycsb_result))
    console.print(ycsb_part.breakdown_table(ycsb_result))
    written = [result.json_path, result.plot_path, ycsb_result.json_path, ycsb_result.plot_path]
    console.print(f"[dim]wrote {', '.join(escape(str(path)) for path in written)}[/]")


# -- redteam ------------------------------------------------------------------------


@main.command()
@click.option("--only", "only", multiple=True, metavar="ROW",
              help="Run only this row (its id, e.g. forged-return); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@user_errors
def redteam(only: tuple[str, ...], as_json: bool) -> None:
    """Attack the in-kernel servers and check each attack is stopped the expected way.

    \b
    Each row runs one program from guest/attacks/ on a fresh machine (echo in the kernel,
    a legitimate in-kernel client of it, then the attacker), then checks that echo still
    answers an application correctly. Exit status 0 only if every row passes.
    """
    from rich.progress import Progress

    from underbridge import redteam as red

    known = {spec.id for spec in red.ATTACKS}
    if unknown := [row for row in only if row not in known]:
        raise UserError(f"no red-team row {unknown[0]!r}",
                        hint="the ids are in the first column of `underbridge redteam --json`"
                             " and in ATTACKS (src/underbridge/redteam.py)")
    specs = tuple(spec for spec in red.ATTACKS if not only or spec.id in only)
    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task("attacks", total=len(specs))
        result = red.run(specs, progress=lambda spec: bar.update(task, advance=1,
                                                                 description=spec.id))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        table = Table(title="underbridge redteam (each row: fresh machine, echo in the kernel, "
                            "then a legitimate client checks echo still answers)")
        table.add_column("#", justify="right")
        table.add_column("attack", ratio=3)
        table.add_column("expected", ratio=2)
        table.add_column("observed", ratio=4)
        table.add_column("verdict")
        for number, row in enumerate(result.rows, 1):
            style = "bold green" if row.passed else "bold red"
            table.add_row(str(number), escape(row.spec.attack), escape(row.spec.expect.text),
                          escape(row.observed), f"[{style}]{row.verdict}[/]")
        console.print(table)
        failed = sum(not row.passed for row in result.rows)
        console.print("[bold green]every attack was stopped as expected[/]" if not failed else
                      f"[bold red]{failed} of {len(result.rows)} rows failed[/]")
    sys.exit(0 if result.passed else 1)


# -- fuzz ---------------------------------------------------------------------------


@main.command()
@click.option("--syscalls", "syscall_count", type=click.IntRange(min=0), default=3000,
              show_default=True, help="Syscalls to issue from fuzz guests (at least).")
@click.option("--elf", "elf_count", type=click.IntRange(min=0), default=200, show_default=True,
              help="Mutated ELF files to hand to Kernel.spawn.")
@click.option("--seed", type=click.IntRange(min=0, max=(1 << 64) - 1), default=1,
              show_default=True, help="Same seed and sizes, same counts.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def fuzz(syscall_count: int, elf_count: int, seed: int, as_json: bool) -> None:
    """Fuzz the kernel: random syscalls from guests, and mutated ELF files.

    \b
    Syscalls come from guest/apps/fuzz_syscalls.c in ring 3 and in kernel space, under
    every IPC design, with echo serving. ELF mutants go to Kernel.spawn as bytes.
    Exit status 1 if any kernel exception (a Python exception other than a clean
    UserError/ElfError) escaped the kernel.
    """
    from rich.progress import Progress

    from underbridge import fuzz as fuzzing

    with Progress(console=errors, transient=True, disable=as_json) as bar:
        tasks = {"syscalls": bar.add_task("syscalls", total=syscall_count),
                 "elf": bar.add_task("ELF mutants", total=elf_count)}
        report = fuzzing.run(syscall_count, elf_count, seed,
                             progress=lambda kind, n: bar.advance(tasks[kind], n))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_fuzz(report)
    sys.exit(1 if report.kernel_exceptions else 0)


def _print_fuzz(report: Any) -> None:
    runs = sum(report.syscall_runs.values())
    table = Table(title=f"underbridge fuzz (seed {report.seed})")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("detail", ratio=1)
    table.add_row("syscall runs", f"{runs:,}", _counts(report.syscall_runs))
    table.add_row("syscalls issued", f"{report.syscalls:,}", _counts(report.results))
    table.add_row("guest faults", f"{sum(report.guest_faults.values()):,}",
                  _counts(report.guest_faults))
    table.add_row("ELF mutants", f"{report.elf_mutants:,}", _counts(report.elf_outcomes))
    table.add_row("clean errors", f"{report.clean_errors:,}", "-errno results + refused mutants")
    table.add_row("servers lost", f"{report.servers_lost:,}", "runs after which echo was gone")
    style = "bold red" if report.kernel_exceptions else "bold green"
    table.add_row(f"[{style}]kernel exceptions[/]", f"[{style}]{report.kernel_exceptions}[/]",
                  escape("\n".join(report.exceptions)))
    console.print(table)
    console.print(f"[dim]{report.wall_seconds:.1f} s wall[/]")


def _counts(counter: Any) -> str:
    return escape(", ".join(f"{name} {n:,}" for name, n in counter.most_common()))


if __name__ == "__main__":
    main()
