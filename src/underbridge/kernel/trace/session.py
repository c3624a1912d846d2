"""Turning a trace on for everything a command runs: `recording(path, limit)`.

A command wraps its work in `with recording(path, limit):` and every Kernel created
inside gets a KernelTracer writing into one shared trace (bench ipc makes a machine per
path; each becomes machine #1, #2 in the file). That is the whole entry point: a bench
command adds `--trace` with one `with` line, and its benchmark code needs no parameter.

Invariants:
  - With no recording active, `tracer_for` returns None and the kernel keeps None: no
    hook, no wrapper, nothing per event (the run loop reads `tracer` once per kernel
    entry and tests it for None).
  - The file is written when the block ends normally; a run that raised writes nothing
    (a half trace of a failed run would be taken for a whole one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from underbridge.kernel.trace.chrome import ChromeTrace
from underbridge.kernel.trace.recorder import KernelTracer

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel


class TraceSession:
    """One trace file's worth of recording: the kernels created while it is active."""

    def __init__(self, limit: int | None = None) -> None:
        self.trace = ChromeTrace(limit)
        self.tracers: list[KernelTracer] = []

    def attach(self, kernel: Kernel) -> KernelTracer:
        tracer = KernelTracer(kernel, self.trace, len(self.tracers) + 1)
        self.tracers.append(tracer)
        return tracer

    def finish(self) -> None:
        for tracer in self.tracers:
            tracer.finish()

    def counts(self) -> dict[str, dict[str, int]]:
        """What each machine's trace recorded, by kind (#1, #2, ...)."""
        return {f"#{t.number}": dict(sorted(t.counts.items())) for t in self.tracers}

    def write(self, path: Path) -> None:
        self.trace.write(path, recorded=self.counts())


_ACTIVE: ContextVar[TraceSession | None] = ContextVar("underbridge_trace", default=None)


def tracer_for(kernel: Kernel) -> KernelTracer | None:
    """The tracer a new kernel gets: None unless a recording is active."""
    session = _ACTIVE.get()
    return None if session is None else session.attach(kernel)


@contextmanager
def active(session: TraceSession) -> Iterator[TraceSession]:
    """Record every kernel created inside the block into `session` (not written)."""
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)
        session.finish()


@contextmanager
def recording(path: Path, limit: int | None = None) -> Iterator[TraceSession]:
    """Trace every kernel created inside the block into `path`."""
    with active(TraceSession(limit)) as session:
        yield session
    session.write(path)
