"""Close notifications: a server hears when a client's connection closes.

When a client closes a connection (CAP_DELETE on it) or ends, the kernel queues the
connection's badge on its service (`Service.closed`) and hands it to a thread of the
server blocked in REPLY_WAIT on that service, as a delivery with no caller:
RAX = 0, RDI = the badge, RSI = 0 (no buffer), mr0 = CLOSED_OP (abi/message.py,
UB_IPC_CLOSED in ub_ipc.h). The server releases what it held for that badge (the fs
server: the client's open files and their locks); its reply goes nowhere.

Generic over designs: the receiving thread is found by what every design leaves in a
thread blocked in REPLY_WAIT (RAX still holds the syscall number, RDI the service's
slot), so no design's path changes and nothing is charged (the IPC figures stay as
they are). A passive in-kernel server's main thread, which otherwise blocks for good,
runs its handler on its own thread, in its own domain, for a notification.

Invariants:
  - A badge is told at most once, to one thread of the server, in closing order.
  - Only live services of running servers queue badges; a broken connection (its
    server went first) tells no one.
  - `Kernel.closing` holds exactly the services with queued badges, so the IPC path
    tests one set for emptiness and nothing else when no notification waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.message import CLOSED_OP, DELIVERY
from underbridge.abi.syscalls import Rights, Sys
from underbridge.kernel.objects.connection import Service
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

_RECV = int(Rights.RECV)


def notify(kernel: Kernel, service: Service, badge: int) -> None:
    """The connection with `badge` to `service` closed on its client's side."""
    if not service.alive or not service.server.running:
        return
    service.closed.append(badge)
    kernel.closing.add(service)
    deliver(kernel, service)


def deliver_pending(kernel: Kernel, thread: Thread) -> None:
    """A thread has just made a REPLY_WAIT: if it blocked on a service with queued
    badges, tell it the oldest."""
    if thread.state is ThreadState.BLOCKED:
        service = _receiving_on(thread)
        if service is not None and service in kernel.closing:
            deliver(kernel, service)


def deliver(kernel: Kernel, service: Service) -> None:
    """Tell queued badges to the service's blocked receivers, one each."""
    while service.closed:
        thread = next((t for t in service.server.threads if _receiving_on(t) is service), None)
        if thread is None:
            return
        badge = service.closed.popleft()
        if thread in service.receivers:  # the seL4 family's queue of waiting receivers
            service.receivers.remove(thread)
        thread.context.set_registers(DELIVERY, (0, badge, 0, CLOSED_OP & _MASK, 0, 0, 0))
        thread.reply_to = None
        thread.serving = None  # a notification has no buffer (orphans.py)
        kernel.sched.wake(thread)
    kernel.closing.discard(service)


_MASK = 0xFFFF_FFFF_FFFF_FFFF


def _receiving_on(thread: Thread) -> Service | None:
    """The service a thread is blocked in REPLY_WAIT on, if it is."""
    if not thread.alive or thread.state is not ThreadState.BLOCKED:
        return None
    context = thread.context
    if context[Reg.RAX] != Sys.IPC_REPLY_WAIT:
        return None
    return thread.group.caps.peek(context[Reg.RDI], Service, _RECV)
