"""Threads: a saved CPU context, the cap group it belongs to, and why it is blocked.

Invariants:
  - A thread is in exactly one state; only the scheduler moves it between READY and
    RUNNING, and only the kernel blocks and wakes it (sched.block / sched.wake).
  - A BLOCKED thread records what it waits for in `waiting_on`, for reports.
  - IPC fields: `reply_to` is the caller a server thread owes a reply (seL4's reply
    cap); a thread blocked in a call has `calling` set to the connection; `serving` is
    the connection of the last call delivered to a server thread in user space (it is
    serving it until its next REPLY_WAIT; kernel/orphans.py).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import ObjType
from underbridge.kernel.objects.base import KernelObject
from underbridge.machine.context import CpuContext

if TYPE_CHECKING:
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection


class ThreadState(Enum):
    READY = "ready"
    RUNNING = "running"
    BLOCKED = "blocked"
    DEAD = "dead"


class Thread(KernelObject):
    obj_type = ObjType.THREAD

    def __init__(self, tid: int, group: CapGroup, context: CpuContext) -> None:
        super().__init__()
        self.tid = tid
        self.group = group
        self.context = context
        self.state = ThreadState.READY
        self.waiting_on = ""
        self.reply_to: Thread | None = None
        self.calling: Connection | None = None
        self.serving: Connection | None = None

    @property
    def name(self) -> str:
        return f"{self.group.name}/{self.tid}"

    def __repr__(self) -> str:
        return f"<Thread {self.name} {self.state.value}>"
