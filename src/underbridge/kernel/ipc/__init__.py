"""The IPC designs, one module each, behind one interface (`IpcDesign`).

A design decides how a call reaches a server and how the reply comes back, and what
that costs. The kernel's syscall handlers validate capabilities and arguments, then
hand a checked call or reply to the design (decode, then invoke).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
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

    def close_service(self, kernel: Kernel, service: Service) -> None:
        """The service is going away: fail every caller still waiting on it."""


def design_named(name: str) -> IpcDesign:
    from underbridge.kernel.ipc.sel4 import Sel4Ipc

    designs: dict[str, IpcDesign] = {"sel4": Sel4Ipc(kpti=False), "sel4-kpti": Sel4Ipc(kpti=True)}
    if name not in designs:
        raise ValueError(f"unknown IPC design {name!r}; known: {', '.join(designs)}")
    return designs[name]


DESIGNS = ("sel4", "sel4-kpti")
