"""The call half of designs with passive in-kernel servers (underbridge, monolithic).

An in-kernel server's service is passive: its main thread's REPLY_WAIT blocks for good,
and callers' threads run its handler through the connection's entry point (a gate, a
stub). An in-kernel client calls the entry point itself; an application calls IPC_CALL
and the kernel calls the entry point for it (upcall.py), charging the design's entry and
exit rows around it. Calls to servers in user space, and their REPLY_WAIT, go to the
seL4 design.

A design subclasses `PassiveServers`, sets `_user`, `_calls` and the class attributes,
and says which connections have an entry point (`_entry_of`) and which cap groups serve
from kernel space (`_in_kernel`).

Invariant: an application's call either completes in `_app_call`, the kernel's call run
to completion before any other thread runs, or is the seL4 design's; the fast path
checks the connection, its rights and its live service before it commits to either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from underbridge.abi.message import REPLY
from underbridge.abi.syscalls import Rights, Sys
from underbridge.kernel.ipc import Traits
from underbridge.kernel.ipc.sel4 import ADDRESS_SPACE_SWITCH, ENTRY_EXIT
from underbridge.kernel.objects.connection import Connection, Message, Service

if TYPE_CHECKING:
    from underbridge.kernel.ipc.sel4 import Sel4Ipc
    from underbridge.kernel.ipc.upcall import Entry, KernelCalls
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread
    from underbridge.machine.accounting import Charges

_CALL = int(Rights.CALL)


class PassiveServers:
    # Servers in kernel space; a kernel entry is a syscall's without KPTI, and the run
    # loop charges a CR3 write when the CPU next runs another address space.
    traits: ClassVar[Traits] = Traits(
        servers_in_kernel=True,
        syscall_entry_exit=ENTRY_EXIT,
        address_space_switch=ADDRESS_SPACE_SWITCH,
    )
    app_call_entry: ClassVar[Charges]  # into the kernel, up to its call of the entry point
    app_call_exit: ClassVar[Charges]  # back out to the application
    entry_kind: ClassVar[str]  # what the entry points are called, for `waiting_on`
    _user: Sel4Ipc
    _calls: KernelCalls

    def _entry_of(self, conn: Connection) -> Entry | None:
        """The connection's entry point, if its server is in kernel space."""
        raise NotImplementedError

    def _in_kernel(self, group: CapGroup) -> bool:
        """Does this cap group serve from kernel space?"""
        raise NotImplementedError

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        """An application's IPC_CALL to an in-kernel server, checked first, then committed;
        False when a check fails, having changed nothing (the slow path then takes it).
        Calls to user-space servers and REPLY_WAIT of user-space servers take the seL4
        design's fast path.

        It skips the dispatch table and the handler's exceptions: once the connection,
        its rights and its live service are checked, `_app_call` is what `call` runs.
        """
        if number == Sys.IPC_CALL:
            conn = thread.group.caps.peek(args[0], Connection, _CALL)
            if conn is None or not conn.service.alive:
                return False
            entry = self._entry_of(conn)
            if entry is not None:
                self._app_call(kernel, thread, entry, args[1:5])
                return True
        return self._user.fastpath(kernel, thread, number, args)

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        entry = self._entry_of(conn)
        if entry is None:
            self._user.call(kernel, client, conn, msg)
        else:
            self._app_call(kernel, client, entry, msg)

    def _app_call(self, kernel: Kernel, client: Thread, entry: Entry, msg: Message) -> None:
        """An application's call to an in-kernel server: the kernel calls the entry point."""
        machine = kernel.machine
        machine.charge_all(self.app_call_entry)
        status, reply = self._calls.call(kernel, client.tid, entry, msg)
        machine.charge_all(self.app_call_exit)
        client.context.set_registers(REPLY, (status, *reply))

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        """An in-kernel server's service is passive: its thread waits for good, and
        callers run its handler through entry points."""
        if not self._in_kernel(service.server):
            self._user.reply_wait(kernel, server, service, reply)
            return
        kernel.machine.charge_all(ENTRY_EXIT)
        kernel.sched.block(server, self.serving_label(service))

    def serving_label(self, service: Service) -> str:
        """What an in-kernel server's thread waits on between calls (its `waiting_on`,
        which migrate.py reads to tell a quiescent server)."""
        return f"serving {service.name} through {self.entry_kind}"

    def close_service(self, kernel: Kernel, service: Service) -> None:
        self._user.close_service(kernel, service)
