"""The IPC designs, one module each, behind one small interface.

A design decides how a call reaches a server and how the reply comes back, and what
that costs. The kernel's syscall handlers validate capabilities and arguments, then hand
a checked call or reply to the design (decode, then invoke).

The interface has three parts:
  - `IpcDesign`, the core every design implements: call, reply_wait (and their fast
    path), connect, closed, close_service, ended;
  - `Traits`, what a design declares about itself: where its servers run, what a kernel
    entry and an address-space switch cost under it. The kernel and the benchmarks read
    these; they never test a design's name;
  - `DomainPlacement`, the optional part of a design that places servers in kernel
    space, in execution domains (UnderBridge). A design without it has `placement = None`,
    and the kernel uses `NoDomains` in its place.
A new design is one module implementing `IpcDesign`, plus one line in registry.py. The
message's registers on every leg are abi/message.py's, shared with the guest library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from underbridge.errors import UserError

if TYPE_CHECKING:
    from underbridge.bridge.domain import Domain
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection, Message, Service
    from underbridge.kernel.objects.thread import Thread
    from underbridge.machine.accounting import Charges


@dataclass(frozen=True, slots=True)
class Traits:
    """What a design declares about itself."""

    servers_in_kernel: bool  # servers run in kernel space unless told otherwise (benchmarks)
    syscall_entry_exit: Charges  # the primitives of a kernel entry and exit (non-IPC syscalls)
    # The CR3 write the run loop charges when the CPU next runs another address space;
    # None when the design's exit path writes CR3 itself (KPTI), so the switch is paid.
    address_space_switch: Charges | None


class IpcDesign(Protocol):
    name: str
    traits: Traits
    placement: DomainPlacement | None  # None: every server runs in user space

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        """Deliver a call; the client thread blocks until its reply.

        The design charges the whole kernel path of the call (the kernel charges nothing
        generic for IPC_CALL and IPC_REPLY_WAIT).
        """

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        """Reply to the server thread's last caller, then take or wait for the next call."""

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        """Take IPC_CALL or IPC_REPLY_WAIT (`number`, raw syscall `args`) in its common case
        without dispatch: True if it did, with the same effects and charges as the slow
        path (dispatch, then `call` or `reply_wait`); False, having changed nothing, if
        any of its checks fails."""

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """Map a new connection's buffer where its parties need it; its gate or 0."""

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """A connection is being closed (by its client, or, with server_gone, because
        its service is going away): release what the design set up for it; a call still
        in progress on it returns -EPIPE."""

    def close_service(self, kernel: Kernel, service: Service) -> None:
        """The service is going away: fail every caller still waiting on it."""

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        """A cap group has ended."""


class DomainPlacement(Protocol):
    """Servers in kernel space, each in an execution domain (the optional part)."""

    ring: int  # the ring placed servers run in: 0, or 3 (pku-user, pku-shared)

    def admit(
        self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
    ) -> tuple[Domain, int, bytes]:
        """Place a server (its ELF file, linked at `base`) in kernel space: its domain,
        stack top, and the binary to map (rewritten, if the design deprivileges it).
        UserError if it cannot be made safe."""

    def refuse(self, domain: Domain) -> None:
        """Undo `admit` when the server could not be built after all."""

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        """The admitted server's cap group now exists."""

    def in_gate(self, rip: int) -> bool:
        """Is rip inside gate code (where a thread must not be preempted)?"""

    def foreign(self, thread: Thread) -> bool:
        """Is the thread executing another domain's code, inside a call it made?"""

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        """Thread `tid` is about to run (gates read which thread the CPU runs)."""

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """The cap group whose code `thread` runs: its own, or the server's whose handler
        it runs in a call. Its rights apply (trapped port I/O), and a fault ends it."""

    def domain_of(self, group: CapGroup) -> Domain | None:
        """The execution domain of an in-kernel server's cap group (None: user space)."""

    def placed_groups(self) -> list[CapGroup]:
        """The cap groups running in kernel space, in the order they were placed."""


class NoDomains:
    """The placement of a design whose servers all run in user space: there are no
    domains, no gates, and every thread runs its own cap group's code."""

    ring = 0  # never used: nothing is placed

    def __init__(self, design: str) -> None:
        self._design = design

    def admit(
        self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
    ) -> tuple[Domain, int, bytes]:
        raise UserError(
            f"the {self._design} design cannot place {name} in kernel space",
            hint="in-kernel servers need a design with execution domains, e.g. --mode underbridge",
        )

    def refuse(self, domain: Domain) -> None:
        """Nothing was admitted."""

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        """Nothing was admitted."""

    def in_gate(self, rip: int) -> bool:
        return False

    def foreign(self, thread: Thread) -> bool:
        return False

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        """No gates, so nothing to tell ring-0 code about the running thread."""

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        return thread.group

    def domain_of(self, group: CapGroup) -> Domain | None:
        return None

    def placed_groups(self) -> list[CapGroup]:
        return []
