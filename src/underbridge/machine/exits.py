"""What a run of the CPU ends in: an Exit, and the event the engine hooks record.

A hook (hooks.py) records the first event of a run as a `Pending` (kind, vector) and
stops the CPU; the run loop (cpu.py) turns it, or the lack of one, into an Exit. The
exits without a fault are made once: a run ends in one of them on every IPC path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from underbridge.machine.faults import Fault


class ExitKind(Enum):
    SYSCALL = "syscall"  # guest executed `syscall`; RIP is past it
    FAULT = "fault"  # a CPU exception; the Fault says which
    RETURNED = "returned"  # execution reached the `stop_at` address
    PREEMPTED = "preempted"  # the instruction budget ran out
    HALTED = "halted"  # the CPU stopped on its own (ring-0 hlt)


@dataclass(frozen=True, slots=True)
class Exit:
    kind: ExitKind
    fault: Fault | None = None


Pending = tuple[ExitKind, int]  # a hook's record: the kind of event and its vector
SYSCALL_PENDING: Pending = (ExitKind.SYSCALL, 0)

SYSCALL_EXIT, RETURNED_EXIT = Exit(ExitKind.SYSCALL), Exit(ExitKind.RETURNED)
PREEMPTED_EXIT, HALTED_EXIT = Exit(ExitKind.PREEMPTED), Exit(ExitKind.HALTED)
