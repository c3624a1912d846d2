"""Chrome trace event JSON: the file ui.perfetto.dev and chrome://tracing load.

The format (the "Trace Event Format" document of the Chromium project): one JSON object
whose "traceEvents" is a list of events, each with a phase "ph", a name, a "pid" and a
"tid", and a time "ts" in microseconds. The phases written here:
  X  a complete slice ("dur" microseconds);
  i  an instant ("s": "t" thread, "p" process, "g" global scope);
  s, f  the start and end of a flow arrow (same "id" and "cat"; "bp": "e" binds the end
     to the slice enclosing it);
  M  metadata: process_name, process_labels, process_sort_index, thread_name,
     thread_sort_index ("args" holds the value).
Slices are written whole (X) when they end, never as B/E pairs, so a trace cut at its
limit has no unmatched begin.

Time is the simulated clock: cycles at the nominal 2.0 GHz, `ts = cycles / 2000`.

Invariants:
  - At most `limit` events besides metadata are kept. The event that would pass the
    limit is replaced by one global instant "trace limit reached", recording stops
    there, and every event offered after it is counted in `dropped` (written in
    "otherData"), never silently lost.
  - Metadata (names of processes and threads) is always kept: one per track, bounded
    by the threads a run creates, and without it the kept events have no names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CYCLES_PER_US = 2000  # the nominal 2.0 GHz clock the simulated cycles are read at
LIMIT_REACHED = "trace limit reached: recording stopped"

Event = dict[str, Any]


def us(cycles: int) -> float:
    """Simulated cycles as trace time (microseconds at 2.0 GHz)."""
    return cycles / CYCLES_PER_US


class ChromeTrace:
    """The events of one trace file, bounded by `limit` (None: unbounded)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("a trace limit must be at least 1 event")
        self.limit = limit
        self.events: list[Event] = []
        self.metadata: list[Event] = []
        self.dropped = 0
        self.full = False
        self._next_flow = 1

    def add(self, event: Event, at: int | None = None) -> None:
        """Keep `event` (at index `at` of the kept events: a slice that encloses events
        already kept goes before them, so that viewers nest equal-length slices right)."""
        if self.full:
            self.dropped += 1
        elif self.limit is not None and len(self.events) >= self.limit - 1:
            self.full = True
            self.dropped += 1
            self.events.append(
                {"ph": "i", "s": "g", "name": LIMIT_REACHED, "pid": 0, "tid": 0,
                 "ts": event["ts"], "args": {"limit": self.limit}}
            )  # fmt: skip
        elif at is None:
            self.events.append(event)
        else:
            self.events.insert(at, event)

    def slice(
        self,
        name: str,
        pid: int,
        tid: int,
        start: int,
        end: int,
        at: int | None = None,
        **fields: Any,
    ) -> None:
        """A complete slice from cycle `start` to cycle `end` (`at`: see `add`)."""
        self.add(
            {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": us(start),
             "dur": us(end - start), **fields},
            at,
        )  # fmt: skip

    def instant(self, name: str, pid: int, tid: int, at: int, **fields: Any) -> None:
        self.add(
            {"ph": "i", "s": "t", "name": name, "pid": pid, "tid": tid, "ts": us(at), **fields}
        )

    def flow(self, name: str, source: tuple[int, int, int], target: tuple[int, int, int]) -> None:
        """An arrow from the slice enclosing `source` (pid, tid, cycle) to the one
        enclosing `target`."""
        flow_id = self._next_flow
        self._next_flow += 1
        for phase, (pid, tid, at) in (("s", source), ("f", target)):
            event = {"ph": phase, "name": name, "cat": "flow", "id": flow_id, "pid": pid,
                     "tid": tid, "ts": us(at)}  # fmt: skip
            if phase == "f":
                event["bp"] = "e"
            self.add(event)

    def name_process(self, pid: int, name: str, *, label: str = "", sort_index: int = 0) -> None:
        self.metadata.append(_meta("process_name", pid, 0, name=name))
        self.metadata.append(_meta("process_sort_index", pid, 0, sort_index=sort_index))
        if label:
            self.metadata.append(_meta("process_labels", pid, 0, labels=label))

    def name_thread(self, pid: int, tid: int, name: str, *, sort_index: int = 0) -> None:
        self.metadata.append(_meta("thread_name", pid, tid, name=name))
        self.metadata.append(_meta("thread_sort_index", pid, tid, sort_index=sort_index))

    def to_json(self, **other: Any) -> dict[str, Any]:
        return {
            "traceEvents": self.metadata + self.events,
            "displayTimeUnit": "ns",
            "otherData": {
                "clock": "simulated cycles at 2.0 GHz (ts = cycles / 2000)",
                "limit": self.limit,
                "events_dropped": self.dropped,
                **other,
            },
        }

    def write(self, path: Path, **other: Any) -> None:
        path.write_text(json.dumps(self.to_json(**other), separators=(",", ":")))


def _meta(kind: str, pid: int, tid: int, **args: Any) -> Event:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": args}
