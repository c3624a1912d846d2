"""pku-user: the UnderBridge talk's rejected design choice 1. Every server in ONE user
process, each in its own protection-key domain, connected by user-level gates.

Placement: UnderBridge's (underbridge.py and its parts: domains.py, gate_table.py,
kernel_space.py, gate_calls.py), with one difference, the ring: a placed server runs in
RING 3, on the one page table all placed servers share, which is the shared server
process's page table. (The emulator keeps that table as `Machine.kernel_space`: its
kernel pages are U=0, so ring-3 code cannot touch them, exactly as a user process
cannot touch the kernel half of its own page table.) Each server keeps its own region,
key, stacks and connection pages, and its binary is scanned and rewritten for
wrpkru/XRSTOR exactly as for kernel space (bridge/admission.py): PKU isolation in one
address space stands or falls with "no server can write PKRU". Ring 3 needs no secure
monitor: a privileged instruction faults by itself.

The current-thread word that gates read (bridge/gate.py, step 2 and 6) cannot be a
supervisor page in ring 3: it is U=1, read-only (no ring-3 write can reach it), under a
key of its own that every domain's PKRU may read but not write. That key is taken at
start-up, so 14 keys remain for domains and connections instead of 15.

Calls:
  - server-server: a server's connection to another server in the process gets a gate
    from the same generator (gate_table.py); the client calls it directly, in ring 3:
    [gate: rdpkru, wrpkru, handler, wrpkru], machine code only, no kernel.
  - app-server: an application is another process. It reaches a server by kernel IPC
    into the server process: the server's own thread, blocked in REPLY_WAIT, receives
    the call (the seL4 design's path, sel4.py, unchanged) and replies with REPLY_WAIT.
    Its events are seL4's round trip: syscall, [Call fastpath], CR3 write into the
    server process, sysret; the handler in the server's domain; syscall, [ReplyRecv
    fastpath], CR3 write back, sysret. The rows are the ones sel4 charges, because the
    path IS seL4's: the process switch is what design choice 1 keeps and UnderBridge
    removes (the kernel calls the gate itself in ring 0, underbridge.py: one kernel
    entry, no second privilege round trip). That is why the talk moves on.

Invariants (beyond underbridge.py's, which hold here unchanged):
  - Only connections whose client is a placed server get a gate; an application's
    connection is the seL4 design's (its buffer mapped in both page tables, under the
    server's own key in the shared one), so no application ever runs gate code.
  - A placed server's REPLY_WAIT is the seL4 design's: its service is not passive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.underbridge import UnderbridgeIpc

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.connection import Connection, Message, Service
    from underbridge.kernel.objects.thread import Thread


class PkuUserIpc(UnderbridgeIpc):
    name = "pku-user"
    ring = 3  # placed servers run in ring 3, in the one shared server process

    def __init__(self) -> None:
        super().__init__(user_thread_word=True)

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """A gate between two servers in the process; kernel IPC for everything else."""
        server = self._domains.of(conn.service.server)
        if server is None or self._domains.of(conn.client) is None:
            if server is not None:
                ks.check_handler(conn.service.name, conn.service.handler, server.base)
            return self._user.connect(kernel, conn)
        return super().connect(kernel, conn)

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        """Every server's own thread receives kernel IPC (the seL4 design's)."""
        self._user.reply_wait(kernel, server, service, reply)
