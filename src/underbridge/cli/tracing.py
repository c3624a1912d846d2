"""`--trace FILE` and `--trace-limit N`: the two options every traced command shares.

A command adds both with `@trace_options` and wraps its work in
`with traced(trace_file, trace_limit, accounting=...):`; every kernel created inside is
recorded (kernel/trace/session.py). That is the one line `bench crash` or `bench
migrate` needs. The trace module is imported only when a trace is asked for, so
`underbridge --help` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from underbridge.cli.common import errors, output_file
from underbridge.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_TRACE_LIMIT = 1_000_000  # events: about 130 MB of JSON


def trace_options(command: F) -> F:
    """Add --trace FILE and --trace-limit N (parameters trace_file, trace_limit)."""
    command = click.option(
        "--trace-limit",
        type=click.IntRange(min=1),
        default=DEFAULT_TRACE_LIMIT,
        show_default=True,
        help="At most N events in the trace: at the limit recording stops, and the trace "
        "ends with a 'trace limit reached' marker and counts what it dropped.",
    )(command)
    return click.option(
        "--trace",
        "trace_file",
        type=click.Path(dir_okay=False, path_type=Path),
        callback=output_file,
        help="Write a Chrome trace event JSON file (ui.perfetto.dev, chrome://tracing) of "
        "the run on the simulated clock to FILE.",
    )(command)


@contextmanager
def traced(trace_file: Path | None, limit: int, *, accounting: bool = True) -> Iterator[None]:
    """Record every kernel the block creates into `trace_file` (None: no trace)."""
    if trace_file is None:
        yield
        return
    if not accounting:
        raise UserError(
            "--trace draws the run on the simulated clock, which --no-accounting turns off",
            hint="drop one of the two",
        )
    from underbridge.kernel.trace.session import recording

    with recording(trace_file, limit) as session:
        yield
    dropped = session.trace.dropped
    note = f" (limit reached: {dropped:,} events dropped)" if dropped else ""
    errors.print(f"[dim]wrote trace {escape(str(trace_file))}{note}[/]")
