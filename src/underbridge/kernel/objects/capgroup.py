"""Cap groups (processes): a capability table, an address space, threads, a console.

Invariants:
  - A cap group ends exactly once (exit, last thread gone, or a fault); ending it kills
    its threads, destroys the objects it created (revoking every cap to them,
    anywhere), tears down its address space, and wakes the threads waiting for it.
  - `owned` lists the objects this group created; it is their only owner. A connection
    leaves it when it is closed, so connect-and-close loops do not grow it.
  - An ended group stays a live object (a zombie: its `ending` says how it ended), so
    caps to it still work for WAIT.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import ObjType
from underbridge.kernel.cap import CapTable
from underbridge.kernel.objects.base import KernelObject
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.objects.vmspace import VmSpace
from underbridge.machine.faults import Fault

if TYPE_CHECKING:
    from underbridge.kernel.linux_abi import LinuxState

MAX_CONSOLE_BYTES = 1 << 20


class GroupState(Enum):
    RUNNING = "running"
    EXITED = "exited"
    FAULTED = "faulted"


@dataclass(frozen=True, slots=True)
class Ending:
    state: GroupState
    status: int = 0
    fault: Fault | None = None


class CapGroup(KernelObject):
    obj_type = ObjType.CAP_GROUP

    def __init__(self, pid: int, name: str, vmspace: VmSpace) -> None:
        super().__init__()
        self.pid = pid
        self.name = name
        self.caps = CapTable()
        self.vmspace = vmspace
        self.threads: list[Thread] = []
        self.owned: list[KernelObject] = []
        self.ending: Ending | None = None
        self.waiters: list[tuple[Thread, int]] = []  # (thread, address of its exit info)
        self.console = bytearray()
        self.io_ports: range = range(0)  # the I/O ports it may use (drivers)
        self.port_writes: list[tuple[int, int]] = []  # (port, byte): there are no devices
        self.linux: LinuxState | None = None  # set for a Linux-ABI (musl) program
        # Why it runs where it does, when that is not where it was asked to (no key left)
        self.placement_note = ""
        self.elf: bytes | None = None  # the binary as mapped (live migration re-admits it)

    @property
    def state(self) -> GroupState:
        return GroupState.RUNNING if self.ending is None else self.ending.state

    @property
    def running(self) -> bool:
        return self.ending is None

    @property
    def exit_status(self) -> int | None:
        return None if self.ending is None else self.ending.status

    @property
    def fault(self) -> Fault | None:
        return None if self.ending is None else self.ending.fault

    def append_console(self, data: bytes) -> bytes:
        """Append what fits under the cap and return that part."""
        kept = data[: MAX_CONSOLE_BYTES - len(self.console)]
        self.console += kept
        return kept

    def __repr__(self) -> str:
        return f"<CapGroup {self.pid} {self.name} {self.state.value}>"
