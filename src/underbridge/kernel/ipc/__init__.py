"""The IPC designs, one module each, behind one interface (`IpcDesign`).

A design decides how a call reaches a server and how the reply comes back, and what
that costs. The kernel's syscall handlers validate capabilities and arguments, then
hand a checked call or reply to the design (decode, then invoke).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from underbridge.bridge.domain import Domain
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection, Message, Service
    from underbridge.kernel.objects.thread import Thread


class IpcDesign(Protocol):
    name: str
    kpti: bool

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        """Deliver a call; the client thread blocks until its reply.

        The design charges the whole kernel path of the call (the kernel charges nothing
        generic for IPC_CALL and IPC_REPLY_WAIT).
        """

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service,
                   reply: Message) -> None:
        """Reply to the server thread's last caller, then take or wait for the next call."""

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]
                 ) -> bool:
        """Take IPC_CALL or IPC_REPLY_WAIT (`number`, raw syscall `args`) in its common case
        without dispatch: True if it did, with the same effects and charges as the slow
        path (dispatch, then `call` or `reply_wait`); False, having changed nothing, if
        any of its checks fails."""

    def close_service(self, kernel: Kernel, service: Service) -> None:
        """The service is going away: fail every caller still waiting on it."""

    def admit(self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
              ) -> tuple[Domain, int, bytes]:
        """Place a server (its ELF file, linked at `base`) in kernel space: its domain,
        stack top, and the binary to map (rewritten, if the design deprivileges it).

        A design without execution domains raises UserError.
        """

    def refuse(self, domain: Domain) -> None:
        """Undo `admit` when the server could not be built after all."""

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        """The admitted server's cap group now exists."""

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """Map a new connection's buffer where its parties need it; its gate or 0."""

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """A connection is being closed (by its client, or, with server_gone, because
        its service is going away): release what the design set up for it; a call still
        in progress on it returns -EPIPE."""

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        """A cap group has ended."""

    def in_gate(self, rip: int) -> bool:
        """Is rip inside gate code (where a thread must not be preempted)?"""

    def foreign(self, thread: Thread) -> bool:
        """Is the thread executing another domain's code, inside a call it made?"""

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        """Ring-0 code is about to run on thread `tid`."""

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """The cap group whose code `thread` runs: its own, or the server's whose handler
        it runs in a call. Its rights apply (trapped port I/O), and a fault ends it."""


def design_named(name: str) -> IpcDesign:
    from underbridge.kernel.ipc.sel4 import Sel4Ipc
    from underbridge.kernel.ipc.underbridge import UnderbridgeIpc

    makers = {"sel4": lambda: Sel4Ipc(kpti=False), "sel4-kpti": lambda: Sel4Ipc(kpti=True),
              "underbridge": UnderbridgeIpc}
    if name not in makers:
        raise ValueError(f"unknown IPC design {name!r}; known: {', '.join(makers)}")
    return makers[name]()  # type: ignore[no-any-return]


DESIGNS = ("sel4", "sel4-kpti", "underbridge")
