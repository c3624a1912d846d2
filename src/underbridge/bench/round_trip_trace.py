"""One IPC round trip per design, as a trace: what `reproduce --trace-dir` writes.

For each design, the IPC benchmark runs with one round (bench/ipc.py, both paths)
while a trace records (kernel/trace/); the file keeps only what happened between
pingpong's first two timing markers (bench/markers.py), which on each machine is
exactly one ECHO_REGS call and its reply: machine #1 is the app-server path, #2 the
server-server path. `steps` lists a round trip's slices and instants in order, for the
README's one-line description per design.

Invariants:
  - The window is found from the trace itself (the markers' "syscall WRITE" slices
    with a zero length argument), so what is kept is what the recorder saw.
  - A kept slice lies wholly inside the window; a flow arrow is kept only with both of
    its ends; the metadata (track names) is kept whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from underbridge.bench import ipc as ipc_bench
from underbridge.kernel.trace.chrome import CYCLES_PER_US, ChromeTrace
from underbridge.kernel.trace.recorder import ID_STRIDE
from underbridge.kernel.trace.session import TraceSession, active

Event = dict[str, Any]


def record(mode: str) -> ChromeTrace:
    """The trace of one round trip of `mode` on both paths."""
    session = TraceSession()
    with active(session):
        ipc_bench.run(mode, rounds=1)
    trace = session.trace
    trace.events = [e for m in range(1, len(session.tracers) + 1) for e in _window(trace, m)]
    return trace


def write(mode: str, directory: Path) -> Path:
    path = directory / f"trace-{mode}.json"
    record(mode).write(path, design=mode, window="one ECHO_REGS round trip per path")
    return path


def _markers(events: list[Event], machine: int) -> list[Event]:
    return [
        e
        for e in events
        if e["ph"] == "X"
        and e.get("cat") == "syscall"
        and e["pid"] // ID_STRIDE == machine
        and e["name"] == "syscall WRITE"
        and e["args"]["args"][1] == "0x0"  # a zero-length write: a timing marker
    ]


def _window(trace: ChromeTrace, machine: int) -> list[Event]:
    marks = _markers(trace.events, machine)
    if len(marks) < 2:
        raise ipc_bench.BenchFailed(f"machine #{machine}: pingpong's timing markers are missing")
    start, end = _cycles(marks[0]["ts"] + marks[0]["dur"]), _cycles(marks[1]["ts"])

    def inside(e: Event) -> bool:
        return (
            e["pid"] // ID_STRIDE == machine
            and start <= _cycles(e["ts"])
            and _cycles(e["ts"] + e.get("dur", 0)) <= end
        )

    kept = [e for e in trace.events if inside(e)]
    ends: dict[int, int] = {}
    for e in kept:
        if e["ph"] in ("s", "f"):
            ends[e["id"]] = ends.get(e["id"], 0) + 1
    return [e for e in kept if e["ph"] not in ("s", "f") or ends[e["id"]] == 2]


def _cycles(ts: float) -> int:
    """Trace time back to whole cycles (ts is cycles / 2000, sums of it are not exact)."""
    return round(ts * CYCLES_PER_US)


def steps(trace: ChromeTrace, machine: int) -> list[str]:
    """The names of a round trip's slices and instants on `machine`, in time order."""
    events = [
        e
        for e in trace.events
        if e["pid"] // ID_STRIDE == machine and e["ph"] in ("X", "i") and e.get("cat") != "sched"
    ]
    outer = ("run", "syscall", "gate")  # at equal times, the enclosing slice first
    events.sort(key=lambda e: (e["ts"], -e.get("dur", 0), e.get("cat") not in outer))
    return [e["name"] for e in events]
