"""Monolithic: every server in kernel space, in the kernel's own domain, and NO ISOLATION.

This design is the lower bound the others are measured against (UnderBridge, section 1:
a function-pointer call in a kernel, about 24 cycles, costs.py `function_call`). Its
point is that it isolates nothing: an in-kernel server can read and write every other
server's memory and the kernel's (tests/kernel/test_monolithic.py asserts it), exactly
as a module of a monolithic kernel can. Use it to see what isolation costs, never to
run anything that must be kept apart.

Placement: a server spawned in kernel space runs in ring 0 on the kernel page table in
its REGION_SIZE region (kernel_space.check_base and check_image, as under underbridge:
the same binaries, linked at the same bases), every page of it under key 0, the
kernel's, and its threads' PKRU is the kernel's (the one that opens key 0). No protection key is
allocated, the binary is neither rewritten nor scanned (nothing it could do with
`wrpkru` would gain it anything), and it runs as built. The secure monitor still traps
privileged instructions in ring 0: that is the emulated machine's, not this design's.
Its service is passive: its main thread's REPLY_WAIT blocks for good, and callers' threads
run its handler.

A connection to an in-kernel server gets a stub (stub.py: 17 instructions that build
the handler's struct ub_msg on the caller's stack and call the handler) in a key-0 page
of the gate window, and its buffer mapped once on the kernel page table (and in an
application client's own page table). IPC_CONNECT returns the stub's address:
  - an in-kernel client calls the stub directly, with the unchanged IPC library's
    `call *gate`: a round trip is the stub's machine code and the handler's;
  - an application calls IPC_CALL: the kernel calls the stub itself on its own stack
    (upcall.py, as underbridge does for a gate), then returns to the application.
Connections to servers in user space go through the seL4 design, as under underbridge.

Hardware events of one round trip:
  server-server: [call, stub, handler, ret] - machine code only, nothing charged by
                 name; compared with (never charged as) the 24-cycle function call.
  app-server:    syscall, swapgs, [kernel Call fastpath], [stub, handler], swapgs, sysret
Why these charges:
  - the entry and exit are a syscall's, as under underbridge without KPTI (the same
    rows: syscall, swapgs x2, sysret);
  - the kernel's decode-and-dispatch (find the connection, check its rights, take the
    message registers) is charged as seL4's Call fastpath, the one measured kernel IPC
    path in costs.py, as underbridge charges it: the two designs then differ only in
    what really differs (CR3 writes, the gate's checks and PKRU switches);
  - no CR3 write: a monolithic kernel (Linux without KPTI) maps itself and its modules
    in every process's page table, so entering it switches no address space. The
    emulator keeps in-kernel servers on the kernel page table (they are linked at low
    addresses, the same binaries as every design), and its switch to it on an
    application's call stands for no hardware event. An application still has its own
    page table: switching between applications writes CR3 (the run loop charges it).

Faults: nothing records calls in progress (that is the isolation this design has not
got), so a fault is blamed on the server whose region holds the faulting instruction
(`code_owner`), and that server ends. A kernel call for an application whose handler
faults or never returns returns -EPIPE (upcall.py). An in-kernel thread that was inside
the dead server's handler resumes in unmapped code and ends too: no fault containment,
as when a module of a monolithic kernel crashes. A syscall from inside another server's
handler gets -EDEADLK, as under underbridge: the thread's capabilities are its own
group's, not the code's (correctness, not isolation).

Invariants:
  - No protection key is ever allocated: every page this design maps (server images
    and stacks, stubs, buffers, the kernel's call stack) carries key 0, so who may touch
    it is every ring-0 server and the kernel, by design.
  - A stub slot is in exactly one of: free (`_slots`), a live stub (`_stubs`), a
    tombstone (its client's `tombstones`) until that client ends.
  - The kernel's calls for applications run one at a time, to completion (upcall.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Prot
from underbridge.bridge import gate
from underbridge.bridge.domain import KERNEL_KEY, Domain, kernel_call_pkru
from underbridge.elf.image import parse_elf
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc import stub
from underbridge.kernel.ipc.passive import PassiveServers
from underbridge.kernel.ipc.sel4 import Sel4Ipc
from underbridge.kernel.ipc.upcall import KernelCalls
from underbridge.kernel.objects.connection import Connection
from underbridge.machine.accounting import Charges
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread
    from underbridge.machine.context import CpuContext

# The kernel calls handlers on a stack as large as an in-kernel server thread's own:
# the handler (and what it calls in turn) runs there as it would on its own thread.
KERNEL_STACK_PAGES = ks.SERVER_STACK_PAGES


@dataclass(eq=False)
class Placed:
    """An in-kernel server: its cap group and region."""

    group: CapGroup
    base: int
    tombstones: list[int] = field(default_factory=list)  # stub slots answering -EPIPE


@dataclass(eq=False)
class Stub:
    """A connection to an in-kernel server: the page its stub lives in."""

    conn: Connection
    slot: int
    client: Placed | None  # None: an application (the kernel calls the stub for it)

    @property
    def address(self) -> int:
        return ks.GATE_WINDOW + self.slot * PAGE_SIZE

    @property
    def caller_pkru(self) -> int:
        return kernel_call_pkru(KERNEL_KEY)  # key 0 opens everything that is mapped


class MonolithicIpc(PassiveServers):
    ring = 0  # placed servers run in ring 0
    name = "monolithic"
    entry_kind = "stubs"
    ring = 0  # servers run in ring 0 on the kernel page table
    # An application's call: into the kernel and its decode-and-dispatch (charged as
    # seL4's Call fastpath, see above); then out. No CR3 write either way.
    app_call_entry = Charges.of(("swapgs", 2), "sel4_fastpath_call")
    app_call_exit = Charges.of("sysret")

    def __init__(self) -> None:
        self.placement = self  # servers in kernel space (DomainPlacement), in no domain
        self._placed: dict[CapGroup, Placed] = {}
        self._by_base: dict[int, Placed] = {}
        self._stubs: dict[Connection, Stub] = {}
        self._slots = ks.Slots()
        self._pages = ks.KernelPages(stack_pages=KERNEL_STACK_PAGES)
        self._calls = KernelCalls(self._pages, self._call_culprit, lambda: len(self._placed))
        self._user = Sel4Ipc(kpti=False)  # servers in user space, and calls to them

    # -- placement (DomainPlacement) ----------------------------------------------------

    def admit(
        self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
    ) -> tuple[Domain, int, bytes]:
        """The region's checks only: no key, no rewriting, no scan (`rewrite` is moot)."""
        owner = self._by_base.get(base)
        ks.check_base(name, base, None if owner is None else owner.group.name)
        ks.check_image(name, base, parse_elf(elf, name=name))
        return Domain(name, KERNEL_KEY), base + ks.REGION_SIZE - PAGE_SIZE, elf

    def refuse(self, domain: Domain) -> None:
        """Nothing was allocated for it."""

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        group.vmspace.guest_window = (base, base + ks.REGION_SIZE // 2)
        self._placed[group] = self._by_base[base] = Placed(group, base)

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        placed = self._placed.pop(group, None)
        if placed is None:
            return
        del self._by_base[placed.base]
        for slot in placed.tombstones:
            ks.unmap_and_free(kernel, [ks.GATE_WINDOW + slot * PAGE_SIZE])
            self._slots.give_back(slot)

    def in_gate(self, rip: int) -> bool:
        return False  # a stub holds no state outside the stack: preempting it is harmless

    def foreign(self, thread: Thread) -> bool:
        """Is this in-kernel thread running another server's code (inside a call)?"""
        if thread.group not in self._placed:
            return False
        owner = self._owner_of(thread.context.rip)
        return owner is not None and owner.group is not thread.group

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        """Stubs read nothing of the running thread."""

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """The server whose region holds the thread's instruction (no records: see above)."""
        if thread.group not in self._placed:
            return thread.group
        owner = self._owner_of(thread.context.rip)
        return thread.group if owner is None else owner.group

    def domain_of(self, group: CapGroup) -> Domain | None:
        placed = self._placed.get(group)
        return None if placed is None else Domain(group.name, KERNEL_KEY)

    def placed_groups(self) -> list[CapGroup]:
        return list(self._placed)

    def _entry_of(self, conn: Connection) -> Stub | None:
        return self._stubs.get(conn)

    def _in_kernel(self, group: CapGroup) -> bool:
        return group in self._placed

    def _owner_of(self, rip: int) -> Placed | None:
        return self._by_base.get(rip - rip % ks.REGION_SIZE)

    def _call_culprit(self, kernel: Kernel, tid: int, context: CpuContext) -> CapGroup | None:
        owner = self._owner_of(context.rip)
        return None if owner is None else owner.group

    # -- connections ------------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        server = self._placed.get(conn.service.server)
        if server is None:
            return self._user.connect(kernel, conn)
        handler = conn.service.handler
        ks.check_handler(conn.service.name, handler, server.base)
        self._pages.ensure(kernel)
        client = self._placed.get(conn.client)
        self._map_buffer(conn, client)
        slot = self._slots.take()
        state = Stub(conn, slot, client)
        try:
            code = stub.generate(
                address=state.address, handler=handler, badge=conn.badge, buffer=conn.buffer_vaddr
            )
            self._write_page(kernel, state.address, code, fresh=True)
        except OutOfMemory as error:
            self._slots.give_back(slot)
            raise SyscallError(Errno.ENOMEM, f"no memory for a connection: {error}") from error
        except BaseException:
            self._slots.give_back(slot)
            raise
        self._stubs[conn] = state
        # Only an in-kernel client may call the stub itself: an application's page table
        # does not map it, and the kernel calls it on the application's behalf.
        return state.address if client is not None else 0

    def _map_buffer(self, conn: Connection, client: Placed | None) -> None:
        """Once on the kernel page table (key 0), and in an application client's own
        page table; neither party can unmap it."""
        rw = Prot.READ | Prot.WRITE
        conn.service.server.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)
        if client is None:
            conn.client.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr, rw, pinned=True)

    def _write_page(self, kernel: Kernel, address: int, code: bytes, *, fresh: bool) -> None:
        """Put code in a stub page (a fresh key-0 r-x page, or the one already there)."""
        machine = kernel.machine
        if fresh:
            frame = ks.map_page(kernel, address, PageFlags(user=True, executable=True))
        else:
            found = machine.kernel_space.translate(address)
            assert found is not None
            frame = found
            machine.mem.zero(frame)
        machine.mem.write(frame, code)
        machine.code_changed(machine.kernel_space)

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Release a connection's stub page. If its server went away under a live
        in-kernel client, the page stays, answering -EPIPE (a tombstone, bridge/gate.py),
        until that client ends: its later calls fail cleanly instead of faulting."""
        state = self._stubs.pop(conn, None)
        if state is None:
            return
        client = state.client
        if server_gone and client is not None and client.group.running:
            self._write_page(kernel, state.address, gate.tombstone(), fresh=False)
            client.tombstones.append(state.slot)
            return
        ks.unmap_and_free(kernel, [state.address])
        self._slots.give_back(state.slot)
