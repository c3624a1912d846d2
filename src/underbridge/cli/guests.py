"""`underbridge run`, `demo` and `scan`: a guest program run, shown, or scanned.

`run` exits with the guest's status; with 128 + vector for a fault, EXIT_BUDGET when
its budget of simulated cycles is spent and EXIT_DEADLOCK when no thread can run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from underbridge.cli.common import console, shown, user_errors
from underbridge.cli.tracing import trace_options, traced
from underbridge.errors import UserError

if TYPE_CHECKING:  # commands import what they run, so `--help` loads no emulator
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

RUN_BASE = 0x40_0000
# `run`'s default budget, in simulated cycles: far above what our guests need (SQLite,
# the largest, spends 0.16 billion on YCSB-A's 1,000 records and 1,000 operations under
# sel4), and small enough that a guest spinning forever is stopped in wall time: a few
# minutes of typical code, about half an hour of a one-instruction loop (the slowest
# case: a block hook per instruction).
DEFAULT_BUDGET = 1_000_000_000
EXIT_BUDGET = 124  # as timeout(1) exits when its command ran out of time
EXIT_DEADLOCK = 125


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


def guest_to_run(
    program: str | None, args: tuple[str, ...], c_file: Path | None, *, command: str
) -> tuple[Path, list[str], str]:
    """What `underbridge COMMAND [PROGRAM] [ARGS] [--c FILE]` runs: the built ELF, its
    argv, and its name for reports (argv[0] keeps the bytes it was given)."""
    from underbridge.guestbuild.toolchain import build_program

    if program is None and c_file is None:
        raise UserError(
            "name a program from guest/apps or give --c FILE.c",
            hint=f"underbridge {command} hello   or   underbridge {command} --c mine.c ARGS",
        )
    if c_file is not None and program is not None:
        args = (program, *args)  # with --c, every positional word is an argument
    source: Path | str = c_file if c_file is not None else str(program)
    stem = Path(source).stem if c_file is not None else str(program)
    return build_program(source, base=RUN_BASE), [stem, *args], shown(stem)


@click.command()
@click.argument("program", required=False)
@click.argument("args", nargs=-1)
@click.option(
    "--c",
    "c_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Build and run your own C file instead of a program from guest/apps.",
)
@click.option("--no-accounting", is_flag=True, help="Skip simulated-cycle accounting (faster).")
@click.option(
    "--budget",
    type=click.IntRange(min=0),
    default=DEFAULT_BUDGET,
    show_default=True,
    help="Stop the guest after this many simulated cycles (instructions with "
    "--no-accounting); 0: no limit.",
)
@trace_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def run(
    program: str | None,
    args: tuple[str, ...],
    c_file: Path | None,
    no_accounting: bool,
    budget: int,
    trace_file: Path | None,
    trace_limit: int,
    as_json: bool,
) -> None:
    """Build a guest C program and run it in ring 3.

    \b
    Examples:
      underbridge run hello
      underbridge run --c mine.c first-arg second-arg
    """
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.cpu import Machine

    elf, argv, name = guest_to_run(program, args, c_file, command="run")

    def stream(_process: CapGroup, data: bytes) -> None:
        if not as_json:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()

    def budget_spent() -> bool:  # checked between kernel events, a quantum apart at most
        return budget > 0 and machine.clock() >= budget

    with traced(trace_file, trace_limit, accounting=not no_accounting):
        machine = Machine(accounting=not no_accounting)
        kernel = Kernel(machine, console=stream)
        process = kernel.spawn(elf, argv, name=name)
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
            console.print(
                f"[bold red]{escape(name)} terminated:[/] {escape(process.fault.describe())}"
            )
        elif outcome == "budget":
            console.print(
                f"[bold red]stopped:[/] budget of {budget:,} {unit} spent "
                "(--budget N to change it, 0 for none)"
            )
        elif outcome == "deadlock":
            console.print(
                f"[bold red]deadlock:[/] no thread can run any more; {escape(_waits(blocked))}"
            )
        counts = (
            "accounting off"
            if no_accounting
            else f"{tally.instructions:,} guest instructions, {tally.cycles:,} simulated cycles"
        )
        status = f" (status {process.exit_status})" if outcome == "exited" else ""
        console.print(
            f"[dim]{escape(name)}: {outcome}{status}, {counts}, {wall * 1e3:.1f} ms wall[/]"
        )
    sys.exit(_exit_code(process, outcome))


# -- demo ---------------------------------------------------------------------------


@click.group()
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
        click.echo(
            json.dumps(
                {
                    "isolation_held": result.isolation_held,
                    "guests": [
                        {
                            "name": g.name,
                            "status": g.state.value,
                            "output": bytes(g.console).decode(errors="replace"),
                            "fault": g.fault.to_json() if g.fault else None,
                        }
                        for g in guests
                    ],
                },
                indent=2,
            )
        )
    else:
        for guest in guests:
            console.rule(escape(guest.name), style="dim")
            sys.stdout.write(bytes(guest.console).decode(errors="replace"))
            if guest.fault is not None:
                console.print(f"[bold yellow]  -> {escape(guest.fault.describe())}[/]")
            else:
                console.print(f"[green]  -> {guest.state.value}[/]")
        verdict = (
            "[bold green]isolation held[/]: each guest reached its own memory; each "
            "cross-domain read raised a protection-key fault; the machine runs on."
            if result.isolation_held
            else "[bold red]isolation FAILED[/]"
        )
        console.print(verdict)
    sys.exit(0 if result.isolation_held else 1)


# -- scan ---------------------------------------------------------------------------


@click.command()
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
