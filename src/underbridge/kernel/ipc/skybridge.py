"""SkyBridge IPC (Mi et al., EuroSys 2019): user-space servers called through a trampoline
and VMFUNC, with no kernel on the path.

Placement: every server and application runs in ring 3 in its own address space, as
under seL4. A server registers its function (IPC_REGISTER's handler); its main thread's
REPLY_WAIT then blocks for good: callers' threads run the function (thread migration).

Binding (IPC_CONNECT; sky_bindings.py): the kernel, doing the Rootkernel's EPT work too,
scans both parties for stray VMFUNC bytes (refused if any), gives each an EPTP index,
maps a trampoline (bridge/trampoline.py) into both, makes the calling key, and rebuilds
the EPTP lists (machine/vmfunc.py). IPC_CONNECT returns the trampoline's address, and
the IPC library calls it (`call *gate`), from an application or from a server alike.

Hardware events of one round trip, both paths (the same code; no syscall):
  [trampoline call half], vmfunc, [server half, the server's function], vmfunc,
  [return half]
Each vmfunc is charged its own row (134 cycles, SkyBridge Table 1) by the block
accounting; everything else is executed instructions at one cycle each. No CR3 write,
no syscall, no kernel work is charged: the emulated EPT switch writes no CR3.

Faults and blame (SkyBridge's identity page): the kernel names the running server by
the page table the thread is in (`code_owner`), so a fault in a server's function ends
that server, not the client whose thread ran it. Ending a server unwinds every call in
progress into it: the caller's registers come from its record, the return address from
its own stack, and the call returns -EPIPE. A syscall made from inside another address
space gets -EDEADLK (the thread is running a server's code for a caller).

IPC_CALL through the kernel is not SkyBridge's path: on a SkyBridge connection it gets
-EINVAL (the library always has the trampoline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Prot
from underbridge.bridge.trampoline import SAVED_REGS
from underbridge.errors import SyscallError
from underbridge.kernel.ipc import NoDomains, Traits
from underbridge.kernel.ipc.sel4 import ADDRESS_SPACE_SWITCH, ENTRY_EXIT
from underbridge.kernel.ipc.sky_bindings import Binding, Bindings
from underbridge.machine.context import Reg

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection, Message, Service
    from underbridge.kernel.objects.thread import Thread

_RESTORED = tuple(Reg[name.upper()] for name in SAVED_REGS)
_ZEROED = (Reg.RCX, Reg.RDX, Reg.RSI, Reg.RDI, Reg.R8, Reg.R9, Reg.R10, Reg.R11)
_EPIPE = -Errno.EPIPE & 0xFFFF_FFFF_FFFF_FFFF


class SkyPlacement(NoDomains):
    """No kernel-space domains, but a thread may be running in a server's view."""

    def __init__(self, bindings: Bindings) -> None:
        super().__init__("skybridge")
        self._bindings = bindings

    def foreign(self, thread: Thread) -> bool:
        return thread.context.cr3 != thread.context.eptp_home

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        owner = self._bindings.view_owner(thread.context.cr3)
        return thread.group if owner is None or not owner.running else owner


class SkybridgeIpc:
    name = "skybridge"
    traits = Traits(
        servers_in_kernel=False,
        syscall_entry_exit=ENTRY_EXIT,
        address_space_switch=ADDRESS_SPACE_SWITCH,
    )

    def __init__(self) -> None:
        self.bindings = Bindings()
        self.placement = SkyPlacement(self.bindings)

    # -- connections ------------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        """Map the buffer into both parties, then bind them; the trampoline's address."""
        client, server = conn.client.vmspace, conn.service.server.vmspace
        rw = Prot.READ | Prot.WRITE
        client.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        try:
            if server is not client:
                server.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
            return self.bindings.bind(kernel, conn).address
        except BaseException:
            for space in {client, server}:
                if conn.buffer_vaddr in space.pmo_mappings:
                    space.unmap_pmo(conn.buffer_vaddr)
            raise

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Unwind a call in progress on the binding (it returns -EPIPE), then unbind."""
        binding = self.bindings.of(conn)
        if binding is None:
            return
        if self.bindings.busy(kernel, binding):
            self._unwind(kernel, binding)
        self.bindings.unbind(kernel, binding, tombstone=server_gone and conn.client.running)

    def close_service(self, kernel: Kernel, service: Service) -> None:
        """Callers run the service's function on their own threads: nobody waits."""

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        self.bindings.forget(kernel, group)

    # -- calls ------------------------------------------------------------------------

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> bool:
        return False  # calls never enter the kernel; REPLY_WAIT only blocks

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        raise SyscallError(Errno.EINVAL, "a SkyBridge connection is called through its trampoline")

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service, reply: Message) -> None:
        kernel.machine.charge_all(ENTRY_EXIT)
        kernel.sched.block(server, f"serving {service.name} through trampolines")

    # -- calls in progress --------------------------------------------------------------

    def _unwind(self, kernel: Kernel, binding: Binding) -> None:
        """End the call in progress on `binding`: its thread returns -EPIPE to the caller,
        in the caller's view. The thread is one whose process reaches the client (or is
        it) and which runs in the server's view or further on."""
        inside = {binding.server} | self.bindings.reach(binding.server)
        thread = next(
            (
                t
                for group in list(kernel.groups.values())
                if group.running and group in self._reaching(binding.client)
                for t in group.threads
                if t.alive
                and self.bindings.view_owner(t.context.cr3) in inside
                and t.context.cr3 != t.context.eptp_home
            ),
            None,
        )
        saved = self.bindings.saved_registers(kernel, binding)
        if thread is None or saved is None:
            return
        context, table = thread.context, binding.client.vmspace.table
        raw = kernel.machine.read_virtual(table, saved[0], 8)
        if len(raw) != 8:  # the client forged its own record: its loss
            kernel.kill(thread.group)
            return
        for reg, value in zip(_RESTORED, saved, strict=True):
            context[reg] = value
        context[Reg.RSP] = saved[0] + 8
        for reg in _ZEROED:
            context[reg] = 0
        context[Reg.RAX] = _EPIPE
        context[Reg.CR3] = table.root
        context.rip = int.from_bytes(raw, "little")

    def _reaching(self, client: CapGroup) -> set[CapGroup]:
        """The parties whose threads can be running on the client's behalf."""
        return {client} | {g for g in self.bindings.ids if client in self.bindings.reach(g)}
