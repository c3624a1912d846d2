"""`underbridge fuzz`: random syscalls from guests and mutated ELF files, against the kernel.

Two fuzzers share one report (report.py):
  - syscalls.py: guest/apps/fuzz_syscalls.c issues random syscalls with random
    arguments, in ring 3 and in kernel space, under every IPC design;
  - elf.py: mutated ELF files handed to Kernel.spawn directly (bytes in), in ring 3 and
    in kernel space, each spawned group then run under a budget.
A kernel exception (any exception other than the clean outcomes escaping Kernel.spawn
or Kernel.run) is a bug; the command exits non-zero if there is one.

Same seed and sizes, same counts (report.FuzzReport.counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from underbridge.fuzz import elf, syscalls
from underbridge.fuzz.report import FuzzReport

__all__ = ["FuzzReport", "run"]


def run(
    syscall_count: int,
    elf_count: int,
    seed: int = 1,
    progress: Callable[[str, int], None] | None = None,
) -> FuzzReport:
    """Fuzz with at least `syscall_count` syscalls and `elf_count` ELF mutants.

    progress(kind, n) is told of each finished run ("syscalls", syscalls issued) and
    each mutant ("elf", 1).
    """
    if syscall_count < 0 or elf_count < 0:
        raise ValueError("counts must not be negative")
    report = FuzzReport(seed=seed)
    started = time.perf_counter()
    syscalls.run(
        report,
        syscall_count,
        progress=None if progress is None else lambda n: progress("syscalls", n),
    )
    elf.run(report, elf_count, progress=None if progress is None else lambda n: progress("elf", n))
    report.wall_seconds = time.perf_counter() - started
    return report
