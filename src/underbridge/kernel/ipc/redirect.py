"""How a client keeps calling, unchanged, when a party of its connection migrates: the
kernel's syscall shim and the forwarder pages (migrate.py moves servers; this module
keeps their clients' calls working).

The guest IPC library decides at connect time how it calls (guest/include/ub_ipc.h):
`call *gate` if IPC_CONNECT gave it a gate address, else the IPC_CALL syscall. A
migration must not change that choice, so:
  - an in-kernel client that calls with IPC_CALL on a connection whose gate was made for
    it (it connected while a party was in user space) is sent on to that gate by the
    kernel (`redirect`): the return address is pushed on its own stack with its own
    rights, and it continues in the syscall shim, a key-0 page of kernel code that moves
    the message into the gate's registers, calls the gate, and moves the reply back
    into IPC_CALL's registers (abi/message.py). This works inside a call the kernel
    makes for an application too (upcall.py), where a syscall is otherwise -EDEADLK;
  - a client that holds a gate address and moves out to user space gets, at that same
    address in its own page table, a forwarder page: kernel code, read-only to it, that
    makes the IPC_CALL syscall with its connection's slot; an in-kernel client whose
    server moves out gets the same code at that address on the kernel page table (key
    0, r-x). Its gate slot stays held for the connection (gate_table.Gates.held), so the
    address means the same connection whichever way either party moves next.

Invariants:
  - The kernel writes a client's stack only through umem with the client's PKRU, on the
    page table it runs on: a bad stack pointer hurts the client alone (it is not sent on).
  - A redirected call runs exactly the gate the client could call itself: the gate made
    for its own domain, found through its own capability slot with the CALL right.
  - Shim and forwarder pages are written by the kernel only, and mapped r-x.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Rights, Sys
from underbridge.errors import SyscallError
from underbridge.kernel import umem
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.sel4 import ENTRY_EXIT
from underbridge.kernel.objects.connection import Connection
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.ipc.domains import Domains
    from underbridge.kernel.ipc.gate_table import Gates
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

_CALL = int(Rights.CALL)

# Entered with a thread's registers as at its IPC_CALL (RDI slot; SENT: RSI, RDX, R10,
# R8), R11 = the gate, the return address pushed. RDI and R9 are kept, as after a syscall.
SHIM_CODE = bytes.fromhex(
    "57"  # push rdi
    "4151"  # push r9
    "4889d7"  # mov rdi, rdx    mr1
    "4d89c1"  # mov r9, r8      mr3
    "4d89d0"  # mov r8, r10     mr2 (mr0 stays in rsi)
    "41ffd3"  # call r11        the gate
    "4889fa"  # mov rdx, rdi    reply mr1
    "4d89c2"  # mov r10, r8     reply mr2
    "4d89c8"  # mov r8, r9      reply mr3
    "4159"  # pop r9
    "5f"  # pop rdi
    "c3"  # ret
)


def forwarder_code(slot: int) -> bytes:
    """A gate's calling convention (GATE_MESSAGE both ways, status in RAX) on the outside,
    the IPC_CALL syscall on capability slot `slot` inside."""
    return (
        bytes.fromhex("4889fa4d89c24d89c8")  # mov rdx, rdi; mov r10, r8; mov r8, r9
        + b"\xbf"
        + slot.to_bytes(4, "little")  # mov edi, slot
        + b"\xb8"
        + int(Sys.IPC_CALL).to_bytes(4, "little")  # mov eax, IPC_CALL
        + bytes.fromhex("0f05")  # syscall
        + bytes.fromhex("4d89c14d89d04889d7c3")  # mov r9, r8; mov r8, r10; mov rdi, rdx; ret
    )


# Where a thread returns to in a forwarder after its syscall, and the code left from
# there: mov r9, r8; mov r8, r10; mov rdi, rdx; ret (`finish_forwarder` runs it).
FORWARDER_RETURN = 21
FORWARDER_TAIL = ((Reg.R9, Reg.R8), (Reg.R8, Reg.R10), (Reg.RDI, Reg.RDX))


class Redirects:
    """The shim (mapped on first use) and the clients' forwarder pages."""

    def __init__(self, domains: Domains, gates: Gates) -> None:
        self._domains = domains
        self._gates = gates
        self.shim_ready = False
        self.forwarders: dict[CapGroup, list[int]] = {}  # its forwarder pages' addresses
        self.kernel_forwarders: dict[Connection, int] = {}  # on the kernel page table

    def ensure_shim(self, kernel: Kernel) -> int:
        """Map the shim (once); the number of pages mapped now (0 or 1)."""
        if self.shim_ready:
            return 0
        frame = ks.map_page(kernel, ks.SYSCALL_SHIM_PAGE, PageFlags(user=True, executable=True))
        kernel.machine.mem.write(frame, SHIM_CODE)
        kernel.machine.code_changed(kernel.machine.kernel_space)
        self.shim_ready = True
        return 1

    def redirect(self, kernel: Kernel, context: CpuContext) -> bool:
        """Send an in-kernel client's IPC_CALL (in `context`) on to its own gate, or
        False (nothing changed) if it has none. The client is the domain whose PKRU the
        context holds, outside gate code: the code that made the syscall is its."""
        if not self.shim_ready or context[Reg.RAX] != Sys.IPC_CALL or ks.in_gate(context.rip):
            return False
        pkru = context.pkru
        client = next((state for state in self._domains if state.pkru == pkru), None)
        if client is None:
            return False
        conn = client.group.caps.peek(context[Reg.RDI], Connection, _CALL)
        gate = None if conn is None else self._gates.of(conn)
        if gate is None or gate.client is not client:
            return False
        machine = kernel.machine
        rsp = context[Reg.RSP] - 8
        try:
            table = machine.page_table(context.cr3)
            umem.copy_out(machine, table, rsp, context.rip.to_bytes(8, "little"), pkru=pkru)
        except SyscallError:
            return False  # its own stack is not its own: the syscall fails as before
        machine.charge_all(ENTRY_EXIT)  # into the kernel and out, to the shim
        context[Reg.RSP] = rsp
        context[Reg.R11] = gate.address
        context.rip = ks.SYSCALL_SHIM_PAGE
        return True

    # -- forwarder pages --------------------------------------------------------------

    def add_forwarder(self, kernel: Kernel, group: CapGroup, conn: Connection) -> None:
        """The client moved out holding the gate address of `conn`: a forwarder page
        there, in its own page table, makes its `call *gate` an IPC_CALL."""
        slot = group.caps.slot_of(conn)
        held = self._gates.held.get(conn)
        if slot is None or held is None:
            return  # it holds no address (or no capability: it cannot call anyway)
        address = ks.GATE_WINDOW + held * PAGE_SIZE
        frame = kernel.machine.frames.alloc()
        kernel.machine.mem.write(frame, forwarder_code(slot))
        group.vmspace.map_private(address, frame, PageFlags(user=True, executable=True))
        self.forwarders.setdefault(group, []).append(address)

    def drop_forwarders(self, kernel: Kernel, group: CapGroup) -> int:
        """Unmap and free a client's forwarder pages (it moves in): how many."""
        space = group.vmspace
        addresses = self.forwarders.pop(group, [])
        for address in addresses:
            for frame in space.release_private(address, 1):
                kernel.machine.frames.free(frame)
        return len(addresses)

    def add_kernel_forwarder(self, kernel: Kernel, conn: Connection) -> int:
        """The server of `conn` moved out under an in-kernel client that holds its gate
        address: a forwarder page there, on the kernel page table (key 0, r-x), makes
        the client's `call *gate` an IPC_CALL. The pages mapped (0 or 1)."""
        slot = conn.client.caps.slot_of(conn)
        held = self._gates.held.get(conn)
        if slot is None or held is None:
            return 0
        address = ks.GATE_WINDOW + held * PAGE_SIZE
        frame = ks.map_page(kernel, address, PageFlags(user=True, executable=True))
        kernel.machine.mem.write(frame, forwarder_code(slot))
        kernel.machine.code_changed(kernel.machine.kernel_space)
        self.kernel_forwarders[conn] = address
        return 1

    def drop_kernel_forwarder(self, kernel: Kernel, conn: Connection) -> int:
        """Unmap the connection's kernel forwarder, if it has one: the pages unmapped."""
        address = self.kernel_forwarders.pop(conn, None)
        if address is None:
            return 0
        ks.unmap_and_free(kernel, [address])
        return 1

    def threads_in_forwarder(self, conn: Connection) -> list[CpuContext] | None:
        """The contexts of the client's threads inside the connection's kernel forwarder,
        all at its syscall's return (gate code is never preempted, so a thread can be
        nowhere else in it unless it faulted); None if one is elsewhere in it."""
        low = self.kernel_forwarders.get(conn)
        if low is None:
            return []
        inside = [
            t.context
            for t in conn.client.threads
            if t.alive and low <= t.context.rip < low + PAGE_SIZE
        ]
        if any(context.rip != low + FORWARDER_RETURN for context in inside):
            return None
        return inside

    def finish_forwarder(self, kernel: Kernel, contexts: list[CpuContext]) -> int:
        """Run the rest of the forwarder for these threads, as the CPU would (its moves,
        then `ret` from the client's stack, read with its rights), so its page can go:
        the instructions run. A thread whose stack cannot be read is left (it faults
        on its own when it runs; the page it returns into is then the gate)."""
        machine = kernel.machine
        for context in contexts:
            try:
                table = machine.page_table(context.cr3)
                raw = umem.copy_in(machine, table, context[Reg.RSP], 8, pkru=context.pkru)
            except SyscallError:
                continue
            for target, source in FORWARDER_TAIL:
                context[target] = context[source]
            context[Reg.RSP] += 8
            context.rip = int.from_bytes(raw, "little")
        return (len(FORWARDER_TAIL) + 1) * len(contexts)

    def forget(self, group: CapGroup) -> None:
        """The group ended: its address space (with the pages) is gone already."""
        self.forwarders.pop(group, None)
