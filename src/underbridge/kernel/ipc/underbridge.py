"""UnderBridge IPC: in-kernel servers in execution domains, connected by generated gates.

Placement: a server spawned in kernel space gets an execution domain (bridge/domain.py
states the isolation rules) and runs in ring 0 on the kernel page table in its own
16 MiB virtual-address region. Its service is passive: its main thread's REPLY_WAIT
blocks for good, and callers' threads run its handler through gates (thread migration).

A connection to an in-kernel server gets a shared key for its buffer and control page,
a save area in the client's domain, a server stack in the server's domain, and a gate
(bridge/gate.py) in key-0 pages. IPC_CONNECT returns the gate's address:
  - an in-kernel client calls the gate directly: a round trip is the gate's machine
    code and the handler's, never Python;
  - an application calls IPC_CALL: the kernel switches to the kernel page table and
    calls the gate itself, from key-0 state, then returns to the application.
Connections to servers in user space, and everything for user-space servers, go through
the seL4 design.

Hardware events of one round trip:
  server-server: [gate: rdpkru, wrpkru, handler, wrpkru] - machine code only
  app-server:    syscall, swapgs, [kernel Call fastpath], CR3 write (kernel page
                 table), [gate], CR3 write (back), swapgs, sysret
The kernel's decode-and-dispatch work on the app-server path is charged as seL4's Call
fastpath, the closest measured kernel IPC path (costs.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.bridge import gate as gates
from underbridge.bridge import iocall
from underbridge.bridge.domain import KERNEL_KEY, Domain, KeyAllocator, kernel_call_pkru
from underbridge.bridge.rewrite import RewriteRefused, rewrite_elf
from underbridge.bridge.scan import scan_elf
from underbridge.errors import OutOfMemory, SyscallError, UserError
from underbridge.kernel.ipc.sel4 import Sel4Ipc
from underbridge.kernel.loader import parse_elf
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.connection import Connection, Message, Service
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.syscalls import Errno, Prot
from underbridge.machine.context import Reg
from underbridge.machine.cpu import ExitKind
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

REGION_SIZE = 16 << 20  # each in-kernel server's system-wide virtual-address region
SERVER_STACK_PAGES = 16
CALL_STACK_PAGES = 4  # a server's stack for one connection's calls
# Gates use absolute 32-bit addresses, so everything they name stays below 2 GiB: the
# gates themselves, their control pages and save areas, and the regions of in-kernel
# servers (which hold their handlers, stacks and the save areas of their own calls).
GATE_WINDOW = 0x6000_0000  # key 0, r-x: one page per connection
CONTROL_WINDOW = 0x7000_0000  # shared key: a connection's tokens, one page each
KERNEL_SAVE_WINDOW = 0x7800_0000  # key 0: save areas of the kernel's own calls
IO_ROUTINES_PAGE = 0x7F00_0000  # key 0, r-x: the checked port-I/O routines (bridge/iocall.py)
LOW_LIMIT = GATE_WINDOW  # in-kernel server regions end below this
KERNEL_CALL_STACK = 0x6300_0000_0000  # key 0: the stack the kernel calls gates on
KERNEL_RETURN_PAGE = 0x6300_0001_0000  # key 0, r-x
KERNEL_RETURN = KERNEL_RETURN_PAGE + 0x800  # where a kernel-called gate returns to
MAX_UPCALL_SLICES = 1000  # a handler the kernel called that runs longer is killed

REPLY_TO_APP = (Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)  # IPC_CALL's reply registers
GATE_REGS = (Reg.RSI, Reg.RDI, Reg.R8, Reg.R9)  # the gate's mr0..mr3


@dataclass(eq=False)
class DomainState:
    domain: Domain
    group: CapGroup
    base: int
    next_free: int  # bump allocator for per-connection pages, growing down
    pages: list[int] = field(default_factory=list)  # pages of live allocations
    reusable: dict[int, list[int]] = field(default_factory=dict)  # page count -> lows


@dataclass(eq=False)
class GateState:
    conn: Connection
    shared_key: int
    address: int
    control: int
    save_area: int
    stack_top: int
    client: DomainState | None  # None: an application (the kernel calls for it)
    server: DomainState
    pages: list[int] = field(default_factory=list)  # kernel_space pages to unmap
    borrowed: list[tuple[DomainState, int, int]] = field(default_factory=list)


class UnderbridgeIpc:
    name = "underbridge"
    kpti = False

    def __init__(self) -> None:
        self.keys = KeyAllocator()
        self.domains: dict[CapGroup, DomainState] = {}
        self.gates: dict[Connection, GateState] = {}
        self._sel4 = Sel4Ipc(kpti=False)
        self._kernel_pages_ready = False
        self._io_routines: iocall.IoRoutines | None = None

    # -- placement ------------------------------------------------------------------

    def admit(self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool = True
              ) -> tuple[Domain, int, bytes]:
        """A new in-kernel server: its domain, its initial stack top, the binary to map.

        Loading is scan, rewrite, verify (privilege deprivation):
          - the rewriter (bridge/rewrite.py) breaks up every wrpkru/XRSTOR occurrence
            hidden inside other instructions and turns port I/O into calls of the
            kernel's checked routines;
          - the result is scanned again: code that can still change PKRU (an aligned
            wrpkru, or an occurrence the rewriter could not break up) is refused with
            the findings. Port I/O the rewriter could not convert stays, trapped by
            the secure monitor at run time.
        rewrite=False keeps the binary as built (it is still verified).
        """
        if base % REGION_SIZE or base + REGION_SIZE > LOW_LIMIT:
            raise ValueError(f"in-kernel servers are linked at {REGION_SIZE:#x}-aligned bases "
                             f"below {LOW_LIMIT:#x}")
        self._check_extent(name, base, elf)  # before rewriting: its cost grows with the size
        domain = Domain(name, self.keys.allocate(name))  # first: no work if none is left
        if rewrite:
            with contextlib.suppress(RewriteRefused):  # verified below either way
                elf = rewrite_elf(elf, name=name, io_routines=self.io_routines(kernel)).data
        report = scan_elf(elf, name=name)
        if report.pkru_writers:
            self.keys.release(domain.key)
            found = ", ".join(f"{f.kind} at {f.vaddr:#x}" for f in report.pkru_writers[:5])
            raise UserError(f"{name} cannot run in kernel space: its code can change PKRU "
                            f"({found})", hint="underbridge scan shows every occurrence; "
                            "run it in user space instead")
        try:
            self._check_extent(name, base, elf)  # again: the rewriter adds a segment
        except UserError:
            self.keys.release(domain.key)
            raise
        return domain, base + REGION_SIZE - PAGE_SIZE, elf

    @staticmethod
    def _check_extent(name: str, base: int, elf: bytes) -> None:
        """UserError unless every segment ends in the lower half of the region at base
        (the upper half holds the server's stacks; segments are sorted, the first is at
        base)."""
        end = parse_elf(elf, name=name).end
        if end > base + REGION_SIZE // 2:
            raise UserError(f"{name}'s segments end at {end:#x}, past the lower half of its "
                            f"region [{base:#x}, {base + REGION_SIZE:#x})",
                            hint="an in-kernel server's image must fit in 8 MiB above its base")

    def refuse(self, domain: Domain) -> None:
        self.keys.release(domain.key)

    def io_routines(self, kernel: Kernel) -> iocall.IoRoutines:
        """Where the checked port-I/O routines are (mapping them on first use)."""
        self._ensure_kernel_pages(kernel)
        assert self._io_routines is not None
        return self._io_routines

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        group.vmspace.guest_window = (base, base + REGION_SIZE // 2)
        stack_floor = base + REGION_SIZE - PAGE_SIZE * (SERVER_STACK_PAGES + 1)
        self.domains[group] = DomainState(domain, group, base, stack_floor - PAGE_SIZE)

    def ended(self, kernel: Kernel, group: CapGroup) -> None:
        state = self.domains.pop(group, None)
        if state is not None:
            self._unmap_and_free(kernel, state.pages)  # unmapped before their frames go
            self.keys.release(state.domain.key)

    def _unmap_and_free(self, kernel: Kernel, pages: list[int]) -> None:
        space = kernel.machine.kernel_space
        for vaddr in pages:
            frame = space.unmap(vaddr)
            if frame is not None:
                kernel.machine.frames.free(frame)
        pages.clear()

    # -- connections ------------------------------------------------------------------

    def connect(self, kernel: Kernel, conn: Connection) -> int:
        server = self.domains.get(conn.service.server)
        if server is None:
            return self._sel4.connect(kernel, conn)
        handler = conn.service.handler
        if not server.base <= handler < server.base + REGION_SIZE // 2:  # its image's half
            raise SyscallError(Errno.EINVAL, f"{conn.service.name}'s handler {handler:#x} is "
                                             f"not in its server's region")
        self._ensure_kernel_pages(kernel)
        key = self.keys.allocate(f"connection {conn.badge} to {conn.service.name}")
        client = self.domains.get(conn.client)
        try:
            # The buffer: once on the kernel page table under the shared key, and in
            # an application client's own page table.
            server.group.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr,
                                         Prot.READ | Prot.WRITE, pkey=key)
            if client is None:
                conn.client.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr,
                                            Prot.READ | Prot.WRITE)
            state = self._build(kernel, conn, key, client, server)
        except BaseException:
            self.keys.release(key)
            raise
        self.gates[conn] = state
        for party in (client, server):
            if party is not None:
                party.domain.shared_keys.add(key)
                self._refresh(kernel, party)
        self._emit_gate(kernel, state)
        # Only an in-kernel client may call the gate itself: an application's page table
        # does not map it, and the kernel calls it on the application's behalf.
        return state.address if client is not None else 0

    def _build(self, kernel: Kernel, conn: Connection, key: int, client: DomainState | None,
               server: DomainState) -> GateState:
        """The connection's pages, all or nothing: ENOMEM leaves none of them behind."""
        gate_at = GATE_WINDOW + conn.badge * PAGE_SIZE
        control = CONTROL_WINDOW + conn.badge * PAGE_SIZE
        pages: list[int] = []
        borrowed: list[tuple[DomainState, int, int]] = []
        try:
            self._map(kernel, gate_at, PageFlags(user=True, executable=True, pkey=KERNEL_KEY))
            pages.append(gate_at)
            self._map(kernel, control, PageFlags(user=True, writable=True, pkey=key))
            pages.append(control)
            if client is None:
                save_area = KERNEL_SAVE_WINDOW + conn.badge * PAGE_SIZE
                self._map(kernel, save_area, PageFlags(user=True, writable=True,
                                                       pkey=KERNEL_KEY))
                pages.append(save_area)
            else:
                save_area = self._domain_pages(kernel, client, 1)
                borrowed.append((client, save_area, 1))
            stack_low = self._domain_pages(kernel, server, CALL_STACK_PAGES)
            borrowed.append((server, stack_low, CALL_STACK_PAGES))
        except (OutOfMemory, SyscallError) as error:
            self._unmap_and_free(kernel, pages)
            for owner, low, count in borrowed:
                self._return_pages(kernel, owner, low, count)
            if isinstance(error, SyscallError):
                raise
            raise SyscallError(Errno.ENOMEM, f"no memory for a connection: {error}") from error
        return GateState(conn, key, gate_at, control, save_area,
                         stack_low + CALL_STACK_PAGES * PAGE_SIZE, client, server, pages,
                         borrowed)

    def _map(self, kernel: Kernel, vaddr: int, flags: PageFlags) -> PhysAddr:
        frame = kernel.machine.frames.alloc()
        try:
            kernel.machine.kernel_space.map(vaddr, frame, flags)
        except OutOfMemory:  # no frame for a page-table level
            kernel.machine.frames.free(frame)
            raise
        return frame

    def _domain_pages(self, kernel: Kernel, state: DomainState, count: int) -> int:
        """`count` fresh pages in a domain's region, under its key; their lowest address.

        Addresses given back by `_return_pages` are reused; otherwise the region's free
        part shrinks downwards, with an unmapped guard page after each allocation.
        All or nothing: on OutOfMemory none of the pages stays mapped.
        """
        if state.reusable.get(count):
            low = state.reusable[count].pop()
        else:
            low = state.next_free - (count - 1) * PAGE_SIZE
            if low < state.base + REGION_SIZE // 2:
                raise SyscallError(Errno.ENOMEM, f"{state.domain.name}'s region is full")
            state.next_free = low - 2 * PAGE_SIZE
        flags = PageFlags(user=True, writable=True, pkey=state.domain.key)
        mapped: list[int] = []
        try:
            for index in range(count):
                self._map(kernel, low + index * PAGE_SIZE, flags)
                mapped.append(low + index * PAGE_SIZE)
        except OutOfMemory:
            self._unmap_and_free(kernel, mapped)
            state.reusable.setdefault(count, []).append(low)
            raise
        state.pages.extend(mapped)
        return low

    def _return_pages(self, kernel: Kernel, state: DomainState, low: int, count: int) -> None:
        pages = [low + index * PAGE_SIZE for index in range(count)]
        for vaddr in pages:
            state.pages.remove(vaddr)
        self._unmap_and_free(kernel, pages)
        state.reusable.setdefault(count, []).append(low)

    def _ensure_kernel_pages(self, kernel: Kernel) -> None:
        if self._kernel_pages_ready:
            return
        self._map(kernel, KERNEL_CALL_STACK, PageFlags(user=True, writable=True))
        code, self._io_routines = iocall.generate(IO_ROUTINES_PAGE)
        io_page = self._map(kernel, IO_ROUTINES_PAGE, PageFlags(user=True, executable=True))
        kernel.machine.mem.write(io_page, code)
        ret = self._map(kernel, KERNEL_RETURN_PAGE, PageFlags(user=True, executable=True))
        # Never run by the kernel (run() stops first); a server jumping here gets #UD.
        kernel.machine.mem.write(ret, b"\x0f\x0b" * (PAGE_SIZE // 2))
        self._kernel_pages_ready = True

    def _refresh(self, kernel: Kernel, state: DomainState) -> None:
        """A domain's PKRU changed: its threads and every gate that names it follow."""
        pkru = state.domain.pkru
        for thread in state.group.threads:
            thread.context.pkru = pkru
        for gate in self.gates.values():
            if state in (gate.client, gate.server):
                self._emit_gate(kernel, gate)

    def _emit_gate(self, kernel: Kernel, state: GateState) -> None:
        client_pkru = (kernel_call_pkru(state.shared_key) if state.client is None
                       else state.client.domain.pkru)
        spec = gates.GateSpec(
            address=state.address, client_pkru=client_pkru,
            server_pkru=state.server.domain.pkru, save_area=state.save_area,
            control=state.control, stack_top=state.stack_top,
            handler=state.conn.service.handler, badge=state.conn.badge,
            buffer=state.conn.buffer_vaddr)
        frame = kernel.machine.kernel_space.translate(state.address)
        assert frame is not None
        kernel.machine.mem.zero(frame)
        kernel.machine.mem.write(frame, gates.generate(spec))
        kernel.machine.code_changed(kernel.machine.kernel_space)

    def closed(self, kernel: Kernel, conn: Connection) -> None:
        state = self.gates.pop(conn, None)
        if state is None:
            return
        self._unmap_and_free(kernel, state.pages)
        for owner, low, count in state.borrowed:
            if owner.group in self.domains:  # else its whole region is already gone
                self._return_pages(kernel, owner, low, count)
        for party in (state.client, state.server):
            if party is not None and party.group in self.domains:
                party.domain.shared_keys.discard(state.shared_key)
                self._refresh(kernel, party)
        self.keys.release(state.shared_key)

    def in_gate(self, rip: int) -> bool:
        return GATE_WINDOW <= rip < CONTROL_WINDOW

    def foreign(self, thread: Thread) -> bool:
        """Is this thread executing in another domain (inside a call it made)?"""
        state = self.domains.get(thread.group)
        return state is not None and thread.context.pkru != state.domain.pkru

    # -- calls ----------------------------------------------------------------------

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        state = self.gates.get(conn)
        if state is None:
            self._sel4.call(kernel, client, conn, msg)
            return
        machine = kernel.machine
        machine.charge("swapgs", 2)
        machine.charge("sel4_fastpath_call")
        machine.charge("cr3_write")  # to the kernel page table
        status, reply = self._call_gate(kernel, state, msg)
        machine.charge("cr3_write")  # back to the application's
        machine.charge("sysret")
        context = client.context
        context[Reg.RAX] = status & 0xFFFF_FFFF_FFFF_FFFF
        for reg, value in zip(REPLY_TO_APP, reply, strict=True):
            context[reg] = value

    def _call_gate(self, kernel: Kernel, state: GateState, msg: Message
                   ) -> tuple[int, Message]:
        """Call a gate from key-0 kernel state; run the server's handler to completion."""
        machine = kernel.machine
        context = machine.new_context(ring=0, page_table=machine.kernel_space,
                                      rip=state.address, rsp=KERNEL_CALL_STACK + PAGE_SIZE - 8,
                                      pkru=kernel_call_pkru(state.shared_key))
        stack = machine.kernel_space.translate(KERNEL_CALL_STACK + PAGE_SIZE - 8)
        assert stack is not None
        machine.mem.write_u64(stack, KERNEL_RETURN)
        for reg, value in zip(GATE_REGS, msg, strict=True):
            context[reg] = value
        server = state.server.group
        for _ in range(MAX_UPCALL_SLICES):
            result = machine.run(context, budget=kernel.sched.quantum, stop_at=KERNEL_RETURN)
            if result.kind is ExitKind.RETURNED:
                mr0, mr1, mr2, mr3 = (context[reg] for reg in GATE_REGS)
                return signed(context[Reg.RAX]), (mr0, mr1, mr2, mr3)
            if result.kind is ExitKind.FAULT:
                assert result.fault is not None
                kernel.terminate(server, result.fault)
                return -Errno.EPIPE, (0, 0, 0, 0)
            if result.kind is ExitKind.SYSCALL:
                context[Reg.RAX] = -Errno.EDEADLK & 0xFFFF_FFFF_FFFF_FFFF
        kernel.kill(server)  # a handler that never returns to the kernel
        return -Errno.EPIPE, (0, 0, 0, 0)

    def reply_wait(self, kernel: Kernel, server: Thread, service: Service,
                   reply: Message) -> None:
        if service.server not in self.domains:
            self._sel4.reply_wait(kernel, server, service, reply)
            return
        kernel.machine.charge("swapgs", 2)
        kernel.machine.charge("sysret")
        kernel.sched.block(server, f"serving {service.name} through gates")

    def close_service(self, kernel: Kernel, service: Service) -> None:
        self._sel4.close_service(kernel, service)


def signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value
