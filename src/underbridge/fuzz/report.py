"""What a fuzz campaign counts, and how a kernel exception is summarised.

Outcome classes (every run and every mutant lands in exactly one):
  - clean error: a syscall returned -errno (counted per errno), or Kernel.spawn refused a
    mutant with a UserError/ElfError (counted per exception type);
  - guest fault: the guest broke the hardware's rules and the kernel ended it;
  - hung/blocked: the run's budget was spent, or nothing could run any more;
  - kernel exception: any other Python exception escaping Kernel.spawn or Kernel.run.
    There must be none; each one is kept as a one-line summary naming the innermost
    frame of the package, with what reproduces it.

Invariants: a FuzzReport holds only counts that depend on the seed and the sizes (wall
time is kept apart, in `wall_seconds`, and left out of `counts()`), so two campaigns
with the same inputs have equal counts.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_KEPT = 5  # kernel-exception summaries kept in a report


@dataclass(slots=True)
class FuzzReport:
    seed: int
    syscall_runs: Counter[str] = field(default_factory=Counter)  # how each run ended
    placements: Counter[str] = field(default_factory=Counter)  # runs per placement
    syscalls: int = 0  # syscalls the fuzz guests issued (kernel.syscall_observers)
    results: Counter[str] = field(default_factory=Counter)  # "ok", "blocked", errno names
    guest_faults: Counter[str] = field(default_factory=Counter)  # per exception ("#PF")
    servers_lost: int = 0  # runs after which the echo server was no longer running
    elf_mutants: int = 0
    elf_outcomes: Counter[str] = field(default_factory=Counter)
    kernel_exceptions: int = 0
    exceptions: list[str] = field(default_factory=list)  # the first MAX_KEPT summaries
    wall_seconds: float = 0.0

    def kernel_exception(self, error: BaseException, context: str) -> None:
        self.kernel_exceptions += 1
        if len(self.exceptions) < MAX_KEPT:
            self.exceptions.append(f"{summarise(error)} [{context}]")

    @property
    def clean_errors(self) -> int:
        """Syscalls that returned -errno, plus mutants spawn refused."""
        syscall_errors = sum(n for name, n in self.results.items() if name.startswith("E"))
        refused = sum(n for name, n in self.elf_outcomes.items() if name.endswith("Error"))
        return syscall_errors + refused

    def counts(self) -> dict[str, Any]:
        """Everything but wall time: equal for equal seeds and sizes."""
        return {
            "seed": self.seed,
            "syscall_runs": dict(sorted(self.syscall_runs.items())),
            "placements": dict(sorted(self.placements.items())),
            "syscalls": self.syscalls,
            "results": dict(sorted(self.results.items())),
            "clean_errors": self.clean_errors,
            "guest_faults": dict(sorted(self.guest_faults.items())),
            "servers_lost": self.servers_lost,
            "elf_mutants": self.elf_mutants,
            "elf_outcomes": dict(sorted(self.elf_outcomes.items())),
            "kernel_exceptions": self.kernel_exceptions,
            "exceptions": list(self.exceptions),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.counts(), "wall_seconds": round(self.wall_seconds, 3)}


def summarise(error: BaseException) -> str:
    """`Type: message at file:line in function`, the innermost frame in this package."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if "underbridge" in frame.filename] or frames
    message = str(error).splitlines()[0] if str(error) else ""
    where = ""
    if ours:
        frame = ours[-1]
        where = f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}"
    return f"{type(error).__name__}: {message}{where}"
