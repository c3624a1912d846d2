"""What every `underbridge` command shares: the consoles, user errors, option callbacks.

A UserError (bad ELF, missing gcc, a source that does not compile) prints one line and
a hint and exits EXIT_USER_ERROR; nothing else is caught, so a kernel bug shows its
traceback. Nothing here imports the emulator: `underbridge --help` stays light.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from underbridge.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USER_ERROR = 2
NO_ACCOUNTING_HELP = "Wall time only, no simulated cycles: shows what accounting costs."
MAX_COUNT = 1_000_000_000  # rounds and operations: more would run for days
MAX_RECORDS = 2_000  # YCSB records: the RAM disk holds about 2,000

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
        raise click.BadParameter(
            f"cannot write in {shown(str(directory))}: {error.strerror}"
        ) from None


def output_directory(_ctx: click.Context, _param: click.Parameter, path: Path) -> Path:
    """A click callback: create the output directory now and check it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.BadParameter(f"cannot create {shown(str(path))}: {error.strerror}") from None
    writable_directory(path)
    return path


def output_file(_ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    """A click callback: the file's directory must exist and be writable."""
    if path is not None:
        if not path.parent.is_dir():
            raise click.BadParameter(f"no directory {shown(str(path.parent))}")
        writable_directory(path.parent)
    return path
