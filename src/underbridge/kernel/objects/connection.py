"""IPC services and connections (ChCore's shape, seL4's vocabulary).

A Service is what a server registers under a name; its threads receive on it. A
Connection joins one client cap group to one service: it carries the client's badge
(assigned by the kernel, never by the client, so the server can trust it) and a shared
buffer PMO mapped at the same address in the client and the server.

Invariants:
  - A badge is unique over the kernel's lifetime and known only to the kernel and the
    server that receives it.
  - The shared buffer is mapped into exactly the two cap groups of its connection;
    closing the connection destroys the buffer, unmapping it from both, except while a
    server thread in user space is serving a call on it: then it leaves the client at
    once and the server at that thread's next REPLY_WAIT (kernel/orphans.py).
  - When the server goes first, the connection is `broken`: the buffer leaves every
    address space but the client's (where it stays, under the client's own key, until
    the client closes the connection or ends), the connection leaves its service, and
    every call on it fails with -EPIPE. A broken connection is never repaired: the
    client connects again (to a restarted server) and gets a new one.
  - `pending` holds callers blocked because no server thread was receiving, oldest first.
  - `Service.closed` holds the badges of connections its clients closed, oldest first,
    until a server thread blocked in REPLY_WAIT on the service is told (kernel.py).
  - `Service.connections` holds the service's open connections only: closing one
    (Kernel.close_connection) removes it, and from its client's `owned` too.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import ObjType, Prot
from underbridge.kernel.objects.base import KernelObject
from underbridge.kernel.objects.pmo import Pmo

if TYPE_CHECKING:
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

Message = tuple[int, int, int, int]


class Service(KernelObject):
    obj_type = ObjType.SERVICE

    def __init__(self, name: str, server: CapGroup, handler: int) -> None:
        super().__init__()
        self.name = name
        self.server = server
        self.handler = handler
        self.receivers: deque[Thread] = deque()
        self.pending: deque[tuple[Thread, Connection, Message]] = deque()
        self.connections: list[Connection] = []
        self.closed: deque[int] = deque()  # badges of closed connections, not yet told


class Connection(KernelObject):
    obj_type = ObjType.CONNECTION

    def __init__(
        self, service: Service, client: CapGroup, badge: int, buffer: Pmo, buffer_vaddr: int
    ) -> None:
        super().__init__()
        self.service = service
        self.client = client
        self.badge = badge
        self.buffer = buffer
        self.buffer_vaddr = buffer_vaddr
        self.broken = False  # its server is gone; the client still holds it

    def break_off(self) -> None:
        """The server is gone (the design has released its side): keep the buffer for
        the client only, in the client's address space under the client's own key (a
        key the connection shared with the server may be given to someone else now)."""
        self.broken = True
        client = self.client.vmspace
        for space, vaddr in list(self.buffer.mappings):
            if space is not client:
                space.unmap_pmo(vaddr)
        if not any(space is client for space, _ in self.buffer.mappings):
            client.map_pmo(self.buffer, self.buffer_vaddr, Prot.READ | Prot.WRITE, pinned=True)

    def close(self) -> None:
        if self.alive:
            self.mark_destroyed()
            self.buffer.destroy()

    def destroy(self) -> None:
        self.close()
