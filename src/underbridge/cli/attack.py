"""`underbridge redteam` and `underbridge fuzz`: attacks on the kernel, checked.

Both exit 0 only if the kernel held: every red-team row stopped as expected, and no
kernel exception escaped the fuzzer.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from underbridge.cli.common import console, errors, user_errors
from underbridge.errors import UserError


@click.command()
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="ROW",
    help="Run only this row (its id, e.g. forged-return); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@user_errors
def redteam(only: tuple[str, ...], as_json: bool) -> None:
    """Attack the in-kernel servers and check each attack is stopped the expected way.

    \b
    Each row runs one program from guest/attacks/ on a fresh machine (echo in the kernel,
    a legitimate in-kernel client of it, then the attacker), then checks that echo still
    answers an application correctly. Rows whose attack names another design (skybridge,
    pku-shared, pku-user) run under it, with echo and the client where it places servers.
    Exit status 0 only if every row passes.
    """
    from rich.progress import Progress

    from underbridge import redteam as red

    known = {spec.id for spec in red.ATTACKS}
    if unknown := [row for row in only if row not in known]:
        raise UserError(
            f"no red-team row {unknown[0]!r}",
            hint="the ids are in the first column of `underbridge redteam --json`"
            " and in ATTACKS (src/underbridge/redteam/rows.py)",
        )
    specs = tuple(spec for spec in red.ATTACKS if not only or spec.id in only)
    with Progress(console=errors, transient=True, disable=as_json) as bar:
        task = bar.add_task("attacks", total=len(specs))
        result = red.run(
            specs, progress=lambda spec: bar.update(task, advance=1, description=spec.id)
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        table = Table(
            title="underbridge redteam (each row: fresh machine, echo in the kernel unless "
            "the attack names another design, then a legitimate client checks echo still "
            "answers)"
        )
        table.add_column("#", justify="right")
        table.add_column("attack", ratio=3)
        table.add_column("expected", ratio=2)
        table.add_column("observed", ratio=4)
        table.add_column("verdict")
        for number, row in enumerate(result.rows, 1):
            style = "bold green" if row.passed else "bold red"
            table.add_row(
                str(number),
                escape(row.spec.attack),
                escape(row.spec.expect.text),
                escape(row.observed),
                f"[{style}]{row.verdict}[/]",
            )
        console.print(table)
        failed = sum(not row.passed for row in result.rows)
        console.print(
            "[bold green]every attack was stopped as expected[/]"
            if not failed
            else f"[bold red]{failed} of {len(result.rows)} rows failed[/]"
        )
    sys.exit(0 if result.passed else 1)


# -- fuzz ---------------------------------------------------------------------------


@click.command()
@click.option(
    "--syscalls",
    "syscall_count",
    type=click.IntRange(min=0),
    default=3000,
    show_default=True,
    help="Syscalls to issue from fuzz guests (at least).",
)
@click.option(
    "--elf",
    "elf_count",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Mutated ELF files to hand to Kernel.spawn.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=(1 << 64) - 1),
    default=1,
    show_default=True,
    help="Same seed and sizes, same counts.",
)
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
        tasks = {
            "syscalls": bar.add_task("syscalls", total=syscall_count),
            "elf": bar.add_task("ELF mutants", total=elf_count),
        }
        report = fuzzing.run(
            syscall_count, elf_count, seed, progress=lambda kind, n: bar.advance(tasks[kind], n)
        )
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
    table.add_row(
        "guest faults", f"{sum(report.guest_faults.values()):,}", _counts(report.guest_faults)
    )
    table.add_row("ELF mutants", f"{report.elf_mutants:,}", _counts(report.elf_outcomes))
    table.add_row("clean errors", f"{report.clean_errors:,}", "-errno results + refused mutants")
    table.add_row("servers lost", f"{report.servers_lost:,}", "runs after which echo was gone")
    style = "bold red" if report.kernel_exceptions else "bold green"
    table.add_row(
        f"[{style}]kernel exceptions[/]",
        f"[{style}]{report.kernel_exceptions}[/]",
        escape("\n".join(report.exceptions)),
    )
    console.print(table)
    console.print(f"[dim]{report.wall_seconds:.1f} s wall[/]")


def _counts(counter: Any) -> str:
    return escape(", ".join(f"{name} {n:,}" for name, n in counter.most_common()))
