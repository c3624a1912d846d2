"""Orphaned buffers: a client's close never pulls a buffer out from under its server.

A client may close a connection (CAP_DELETE, or its group ends) while a server thread
in user space is still serving a call on it: the thread was delivered the call
(`sel4.deliver`, which every design's user-space path uses, sets `Thread.serving`) and
has not made its next REPLY_WAIT. Destroying the buffer then would unmap it from the
server too, and the server's handler, still reading or writing it, would fault and
end the server (and every other client's call in progress with it): a client could
crash a server at will. So such a close takes the buffer out of every address space
but the serving thread's server at once (the client can no longer reach it), and the
buffer stays there, an orphan, until that call is over: the thread's next REPLY_WAIT
(its reply goes to a caller that has gone, or whose connection is closed, as before)
frees it. If the server ends first, the buffer goes with it (it sits in the server's
`owned` list, which the kernel destroys at the group's end).

Servers in kernel space (gates, trampolines, the kernel's gate call for an
application) are not served this way: their design ends a call in progress on a
closed connection before the buffer goes (`IpcDesign.closed`: the handler's thread
returns -EPIPE to its caller), so no handler is left running on a freed buffer.

Invariants:
  - An orphan is mapped in exactly one address space, its server's, and in no other;
    the connection itself is destroyed (no cap reaches it, no new call can be made).
  - `Kernel.orphans` maps a serving thread to the one orphan it holds; a thread holds
    at most one (it serves one call at a time). It is freed exactly once: at that
    thread's next REPLY_WAIT, or with its server's group.
  - Nothing here runs on an IPC fast path unless an orphan exists: the kernel tests
    one dict for emptiness (as it does `Kernel.closing`), and no charge is made, so
    the simulated figures are those of a kernel without this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Sys
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.connection import Connection


def serving(conn: Connection) -> Thread | None:
    """The server thread in the middle of a call on `conn`, if any. Ask before the
    design forgets the connection (IpcDesign.closed)."""
    if not conn.service.server.running:
        return None
    for thread in conn.service.server.threads:
        if thread.alive and thread.serving is conn and not _waiting(thread):
            return thread
    return None


def _waiting(thread: Thread) -> bool:
    """Is the thread blocked in REPLY_WAIT (done with its last call)? Every design
    leaves the syscall number in RAX of a thread blocked there (closes.py)."""
    return thread.state is ThreadState.BLOCKED and thread.context[Reg.RAX] == Sys.IPC_REPLY_WAIT


def close(kernel: Kernel, conn: Connection, holder: Thread | None) -> None:
    """Close a connection whose client is done with it: its buffer goes at once, or,
    if `holder` is serving a call on it, leaves every address space but the holder's
    server's and is freed when that call is over."""
    if holder is None:
        conn.close()
        return
    conn.mark_destroyed()
    buffer, server = conn.buffer, holder.group
    for space, vaddr in list(buffer.mappings):
        if space is not server.vmspace:
            space.unmap_pmo(vaddr)
    server.owned.append(buffer)  # destroyed with the server if it ends first
    kernel.orphans[holder] = buffer


def release(kernel: Kernel, thread: Thread) -> None:
    """`thread` made a REPLY_WAIT: the call it was serving is over, so the orphan it
    held (if any) is freed. Orphans whose server has ended (freed with it) are
    forgotten."""
    buffer = kernel.orphans.pop(thread, None)
    if buffer is not None and buffer.alive:
        buffer.destroy()
        thread.group.owned.remove(buffer)
    for gone in [t for t, b in kernel.orphans.items() if not b.alive]:
        del kernel.orphans[gone]
