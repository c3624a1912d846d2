"""Traces of a run on the simulated clock, as Chrome trace event JSON (Perfetto).

  chrome.py    the file format: events, metadata, the event limit
  recorder.py  KernelTracer: what one kernel's run looks like on a timeline
  session.py   `recording(path, limit)`: trace every kernel a command creates

Tracing is off unless a command opens a recording; then each Kernel holds a tracer
(`Kernel.tracer`), the machine gets a block hook and recording charge methods, and
nothing that is counted changes (recorder.py states the invariants).
"""
