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

Where the kernel writes a ring-0 thread's PKRU, RSP or RIP, and why each is safe:
  - a PKRU refresh (`_share_key`): only threads that hold the changed domain's PKRU,
    i.e. run its code, get its new PKRU; a thread inside another domain's handler
    keeps that domain's PKRU (break A1 was the opposite);
  - ending a call whose server is gone (`_end_call_in_progress`, gate_calls.unwind):
    registers from the caller's save area, PKRU from the caller's domain, RIP from the
    caller's stack read with the caller's rights;
  - syscall results and replies (sel4.deliver, give_reply, Kernel.wake_with): only RAX
    and message registers, of a thread blocked in a syscall, which it made from its own
    domain (a syscall from inside another domain's handler is refused with -EDEADLK
    before any handler runs, `foreign`);
  - THREAD_CREATE copies its creator's PKRU, which is the creator's own (same reason);
  - preemption never writes registers, and never happens inside a gate (`in_gate`);
  - the kernel's own gate calls for applications run in a context of their own
    (`Upcall`), to completion, before any other thread runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.bridge import admission, iocall
from underbridge.bridge import gate as gates
from underbridge.bridge.domain import KERNEL_KEY, Domain, KeyAllocator, kernel_call_pkru
from underbridge.bridge.rewrite import check_code_size
from underbridge.errors import ElfError, KernelBug, OutOfMemory, SyscallError, UserError
from underbridge.kernel.ipc import gate_calls
from underbridge.kernel.ipc.sel4 import Sel4Ipc
from underbridge.kernel.loader import ElfImage, Segment, parse_elf
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.connection import Connection, Message, Service
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.syscalls import Errno, Prot, Rights, Sys
from underbridge.machine.accounting import Charges
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.cpu import ExitKind
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.faults import Fault

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
# The id of the thread the CPU runs, for gates to bind a call to its thread (gate.py).
# A supervisor page (U=0), read-only, not executable: every ring-0 server can read it,
# none can write it (CR0.WP=1; the monitor traps `mov cr0`). It holds nothing secret.
CURRENT_THREAD_PAGE = 0x7F00_1000
MAX_GATES = (IO_ROUTINES_PAGE - KERNEL_SAVE_WINDOW) // PAGE_SIZE  # gate slots (the smallest window)
LOW_LIMIT = GATE_WINDOW  # in-kernel server regions end below this
KERNEL_CALL_STACK = 0x6300_0000_0000  # key 0: the stack the kernel calls gates on
KERNEL_RETURN_PAGE = 0x6300_0001_0000  # key 0, r-x
KERNEL_RETURN = KERNEL_RETURN_PAGE + 0x800  # where a kernel-called gate returns to
MAX_UPCALL_SLICES = 1000  # a handler the kernel called that runs longer is killed

REPLY_TO_APP = (Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)  # IPC_CALL's reply registers
_APP_REPLY = (Reg.RAX, *REPLY_TO_APP)
GATE_REGS = (Reg.RSI, Reg.RDI, Reg.R8, Reg.R9)  # the gate's mr0..mr3
_CALL = int(Rights.CALL)
# An application's call: into the kernel, the kernel's decode-and-dispatch (charged as
# seL4's Call fastpath), to the kernel page table; then back, and out.
_APP_CALL_ENTRY = Charges.of(("swapgs", 2), "sel4_fastpath_call", "cr3_write")
_APP_CALL_EXIT = Charges.of("cr3_write", "sysret")


@dataclass(eq=False)
class DomainState:
    domain: Domain
    group: CapGroup
    base: int
    next_free: int  # bump allocator for per-connection pages, growing down
    pages: list[int] = field(default_factory=list)  # pages of live allocations
    reusable: dict[int, list[int]] = field(default_factory=dict)  # page count -> lows
    tombstones: list[int] = field(default_factory=list)  # gate slots answering -EPIPE

    @property
    def pkru(self) -> int:
        return self.domain.pkru


@dataclass(eq=False)
class GateState:
    conn: Connection
    slot: int  # its pages: GATE_WINDOW, CONTROL_WINDOW (, KERNEL_SAVE_WINDOW) + slot pages
    shared_key: int
    address: int
    control: int
    save_area: int
    stack_top: int
    client: DomainState | None  # None: an application (the kernel calls for it)
    server: DomainState
    pages: list[int] = field(default_factory=list)  # kernel_space pages to unmap
    borrowed: list[tuple[DomainState, int, int]] = field(default_factory=list)

    @property
    def caller_pkru(self) -> int:
        return kernel_call_pkru(self.shared_key) if self.client is None else self.client.pkru


@dataclass(eq=False)
class Upcall:
    """A call the kernel makes through a gate for an application thread."""

    tid: int  # the application thread's id: the gate records calls under it
    context: CpuContext


def _outside_region(image: ElfImage, base: int) -> Segment | None:
    """A segment not inside [base, base + REGION_SIZE / 2), if any."""
    return next((s for s in image.segments
                 if s.vaddr < base or s.end > base + REGION_SIZE // 2), None)


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
        self._free_slots: list[int] = []  # gate slots given back, lowest last
        self._next_slot = 1
        self._current_tid = 0  # what the current-thread word holds
        self._upcall: Upcall | None = None  # the kernel's gate call in progress, if any
        self._upcall_context: CpuContext | None = None  # reused by every kernel gate call
        # Physical addresses of kernel pages that stay mapped for the machine's life.
        self._kernel_return_slot = PhysAddr(0)
        self._current_thread_word = PhysAddr(0)

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
        rewrite=False keeps the binary as built (it is still verified). A binary with more
        code than rewrite.MAX_CODE_BYTES is refused first (CodeTooLarge): loading costs
        time linear in the code. So is one with a segment outside the lower half of its
        region (the upper half is the kernel's, for stacks and connection pages): no
        executable page of a server then adjoins another server's or the kernel's, so
        the scan of its own image covers every run of executable pages its code can run
        through (no wrpkru split across two images).
        """
        if base % REGION_SIZE or base + REGION_SIZE > LOW_LIMIT:
            raise ElfError(f"{name} is linked at {base:#x}, but in-kernel servers are linked at "
                           f"{REGION_SIZE:#x}-aligned bases below {LOW_LIMIT:#x}")
        owner = next((s.group.name for s in self.domains.values() if s.base == base), None)
        if owner is not None:
            raise UserError(f"{name} is linked at {base:#x}, the region of {owner}, which is "
                            "in kernel space already", hint="link each in-kernel server at "
                            f"its own {REGION_SIZE:#x}-aligned base")
        image = parse_elf(elf, name=name)
        check_code_size(image, name)
        outside = _outside_region(image, base)
        if outside is not None:
            raise UserError(f"{name}: its segment at {outside.vaddr:#x} lies outside "
                            f"[{base:#x}, {base + REGION_SIZE // 2:#x}), the lower half of "
                            "its kernel-space region", hint="link it at one base, as "
                            "underbridge's toolchain does, or run it in user space")
        domain = Domain(name, self.keys.allocate(name))  # first: no work if none is left
        try:
            elf = self._deprivileged(kernel, name, base, elf, rewrite=rewrite)
        except BaseException:
            self.keys.release(domain.key)
            raise
        return domain, base + REGION_SIZE - PAGE_SIZE, elf

    def _deprivileged(self, kernel: Kernel, name: str, base: int, elf: bytes, *, rewrite: bool
                      ) -> bytes:
        # Cached by content (bridge/admission.py): the same binary is rewritten once. The
        # rewritten binary is kept unless its trampolines do not fit the region.
        routines = self.io_routines(kernel) if rewrite else None
        elf, pkru_writers = admission.vet(
            elf, name=name, io_routines=routines, rewrite=rewrite, base=base,
            fits=lambda data: _outside_region(parse_elf(data, name=name), base) is None)
        if pkru_writers:
            found = ", ".join(f"{f.kind} at {f.vaddr:#x}" for f in pkru_writers[:5])
            raise UserError(f"{name} cannot run in kernel space: its code can change PKRU "
                            f"({found})", hint="underbridge scan shows every occurrence; "
                            "run it in user space instead")
        return elf

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
            for slot in state.tombstones:
                self._release_slot(kernel, slot)
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
        slot = self._take_slot()
        try:
            # The buffer: once on the kernel page table under the shared key, and in
            # an application client's own page table; neither party can unmap it.
            server.group.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr,
                                         Prot.READ | Prot.WRITE, pkey=key, pinned=True)
            if client is None:
                conn.client.vmspace.map_pmo(conn.buffer, conn.buffer_vaddr,
                                            Prot.READ | Prot.WRITE, pinned=True)
            state = self._build(kernel, conn, slot, key, client, server)
        except BaseException:
            self.keys.release(key)
            self._free_slots.append(slot)
            raise
        self.gates[conn] = state
        self._share_key(kernel, [client, server], key, add=True)
        self._emit_gate(kernel, state)
        # Only an in-kernel client may call the gate itself: an application's page table
        # does not map it, and the kernel calls it on the application's behalf.
        return state.address if client is not None else 0

    def _take_slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        if self._next_slot >= MAX_GATES:
            raise SyscallError(Errno.ENOMEM, f"all {MAX_GATES} gate slots are in use")
        self._next_slot += 1
        return self._next_slot - 1

    def _build(self, kernel: Kernel, conn: Connection, slot: int, key: int,
               client: DomainState | None, server: DomainState) -> GateState:
        """The connection's pages, all or nothing: ENOMEM leaves none of them behind."""
        gate_at = GATE_WINDOW + slot * PAGE_SIZE
        control = CONTROL_WINDOW + slot * PAGE_SIZE
        pages: list[int] = []
        borrowed: list[tuple[DomainState, int, int]] = []
        try:
            self._map(kernel, gate_at, PageFlags(user=True, executable=True, pkey=KERNEL_KEY))
            pages.append(gate_at)
            self._map(kernel, control, PageFlags(user=True, writable=True, pkey=key))
            pages.append(control)
            if client is None:
                save_area = KERNEL_SAVE_WINDOW + slot * PAGE_SIZE
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
        return GateState(conn, slot, key, gate_at, control, save_area,
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
        stack = self._map(kernel, KERNEL_CALL_STACK, PageFlags(user=True, writable=True))
        self._kernel_return_slot = stack + PAGE_SIZE - 8  # where a gate call's RIP is pushed
        code, self._io_routines = iocall.generate(IO_ROUTINES_PAGE)
        io_page = self._map(kernel, IO_ROUTINES_PAGE, PageFlags(user=True, executable=True))
        kernel.machine.mem.write(io_page, code)
        ret = self._map(kernel, KERNEL_RETURN_PAGE, PageFlags(user=True, executable=True))
        # Never run by the kernel (run() stops first); a server jumping here gets #UD.
        kernel.machine.mem.write(ret, b"\x0f\x0b" * (PAGE_SIZE // 2))
        self._current_thread_word = self._map(kernel, CURRENT_THREAD_PAGE, PageFlags(user=False))
        self._kernel_pages_ready = True

    def about_to_run(self, kernel: Kernel, tid: int) -> None:
        """Ring-0 code is about to run on thread `tid`: the current-thread word says so."""
        if self._kernel_pages_ready and tid != self._current_tid:
            kernel.machine.mem.write_u64(self._current_thread_word, tid)
            self._current_tid = tid

    def _share_key(self, kernel: Kernel, parties: list[DomainState | None], key: int, *,
                   add: bool) -> None:
        """Open (or close) a shared key in the parties' domains.

        A domain's PKRU changes, so every thread executing that domain's code follows:
        the domain's own threads at home, and threads of other domains that run its
        handler in a call (they hold its PKRU). A thread of the domain that is itself
        inside another domain's handler keeps that domain's PKRU: its way back is its
        gate's return half, whose immediate is rewritten here. A thread's PKRU is always
        the PKRU of the domain whose code it runs.
        """
        for party in parties:
            if party is None or party.group not in self.domains:
                continue
            old = party.pkru
            (party.domain.shared_keys.add if add else party.domain.shared_keys.discard)(key)
            for thread in self._ring0_threads():
                if thread.context.pkru == old:
                    thread.context.pkru = party.pkru
            for gate in self.gates.values():
                if party in (gate.client, gate.server):
                    self._emit_gate(kernel, gate)

    def _ring0_threads(self) -> list[Thread]:
        return [thread for state in self.domains.values() for thread in state.group.threads
                if thread.alive]

    def _emit_gate(self, kernel: Kernel, state: GateState) -> None:
        spec = gates.GateSpec(
            address=state.address, client_pkru=state.caller_pkru,
            server_pkru=state.server.pkru, save_area=state.save_area,
            control=state.control, stack_top=state.stack_top,
            handler=state.conn.service.handler, badge=state.conn.badge,
            buffer=state.conn.buffer_vaddr, current_thread=CURRENT_THREAD_PAGE)
        self._write_gate_page(kernel, state.address, gates.generate(spec))

    def _write_gate_page(self, kernel: Kernel, address: int, code: bytes) -> None:
        frame = kernel.machine.kernel_space.translate(address)
        assert frame is not None
        kernel.machine.mem.zero(frame)
        kernel.machine.mem.write(frame, code)
        kernel.machine.code_changed(kernel.machine.kernel_space)

    def closed(self, kernel: Kernel, conn: Connection, *, server_gone: bool = False) -> None:
        """Release a connection's gate, keys and pages.

        A call still in progress on it ends first: its thread returns -EPIPE to the
        caller. If the server went away under a live in-kernel client, the gate's page
        stays, rewritten to answer -EPIPE (a tombstone), so the client's later calls
        fail cleanly instead of faulting; the slot is freed when the client ends.
        """
        state = self.gates.get(conn)
        if state is None:
            return
        self._end_call_in_progress(kernel, state)
        del self.gates[conn]
        pages = state.pages
        if server_gone and state.client is not None and state.client.group.running:
            pages = [page for page in pages if page != state.address]
            self._write_gate_page(kernel, state.address, gates.tombstone())
            state.client.tombstones.append(state.slot)
        else:
            self._free_slots.append(state.slot)
        self._unmap_and_free(kernel, pages)
        for owner, low, count in state.borrowed:
            if owner.group in self.domains:  # else its whole region is already gone
                self._return_pages(kernel, owner, low, count)
        self._share_key(kernel, [state.client, state.server], state.shared_key, add=False)
        self.keys.release(state.shared_key)

    def _release_slot(self, kernel: Kernel, slot: int) -> None:
        self._unmap_and_free(kernel, [GATE_WINDOW + slot * PAGE_SIZE])
        self._free_slots.append(slot)

    # -- calls in progress ----------------------------------------------------------------

    def _end_call_in_progress(self, kernel: Kernel, state: GateState) -> None:
        """The call through this gate (if any) returns -EPIPE to its caller now."""
        tid = gate_calls.caller_of(kernel.machine, state)
        if not tid:
            return
        for own, context in self._contexts_of(tid):
            route = gate_calls.path(kernel.machine, self.gates.values(), tid, own)
            if state not in route:
                continue
            later = route[route.index(state) + 1 :]
            if gate_calls.unwind(kernel.machine, context, state, tid):
                gate_calls.clear(kernel.machine, later)
            elif state.client is not None:  # the caller forged its save area: its loss
                gate_calls.clear(kernel.machine, [state, *later])
                kernel.kill(state.client.group)

    def _contexts_of(self, tid: int) -> list[tuple[DomainState | None, CpuContext]]:
        """The CPU state (and home domain) of thread `tid`: a ring-0 thread, or the
        kernel's gate call for an application thread."""
        if self._upcall is not None and self._upcall.tid == tid:
            return [(None, self._upcall.context)]
        return [(state, thread.context) for state in self.domains.values()
                for thread in state.group.threads if thread.tid == tid and thread.alive]

    def code_owner(self, kernel: Kernel, thread: Thread) -> CapGroup:
        """The cap group whose code `thread` runs, to blame for its fault and whose rights
        apply to its trapped port I/O (gate_calls.culprit says how it is decided)."""
        own = self.domains.get(thread.group)
        if own is None:
            return thread.group
        return self._culprit(kernel, thread.tid, own, thread.context) or thread.group

    def _culprit(self, kernel: Kernel, tid: int, own: DomainState | None,
                 context: CpuContext) -> CapGroup | None:
        route = gate_calls.path(kernel.machine, self.gates.values(), tid, own)
        party = gate_calls.culprit(route, own, context.pkru, self.in_gate(context.rip),
                                   self.domains.values())
        return None if party is None else party.group

    def in_gate(self, rip: int) -> bool:
        return GATE_WINDOW <= rip < CONTROL_WINDOW

    def foreign(self, thread: Thread) -> bool:
        """Is this thread executing in another domain (inside a call it made)?"""
        state = self.domains.get(thread.group)
        return state is not None and thread.context.pkru != state.pkru

    # -- calls ----------------------------------------------------------------------

    def fastpath(self, kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]
                 ) -> bool:
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
            state = self.gates.get(conn)
            if state is not None:
                self._app_call(kernel, thread, state, args[1:5])
                return True
        return self._sel4.fastpath(kernel, thread, number, args)

    def call(self, kernel: Kernel, client: Thread, conn: Connection, msg: Message) -> None:
        state = self.gates.get(conn)
        if state is None:
            self._sel4.call(kernel, client, conn, msg)
        else:
            self._app_call(kernel, client, state, msg)

    def _app_call(self, kernel: Kernel, client: Thread, state: GateState, msg: Message
                  ) -> None:
        """An application's call to an in-kernel server: the kernel calls the gate."""
        machine = kernel.machine
        machine.charge_all(_APP_CALL_ENTRY)
        status, reply = self._call_gate(kernel, client.tid, state, msg)
        machine.charge_all(_APP_CALL_EXIT)
        client.context.set_registers(_APP_REPLY, (status, *reply))

    def _call_gate(self, kernel: Kernel, tid: int, state: GateState, msg: Message
                   ) -> tuple[int, Message]:
        """Call a gate from key-0 kernel state for application thread `tid`; run the
        server's handler (and whatever it calls) to completion.

        A fault ends the domain to blame (gate_calls.culprit), which ends its calls in
        progress: the kernel's own call returns -EPIPE, or a server further out carries
        on. A handler that runs MAX_UPCALL_SLICES slices without returning is killed.
        """
        if self._upcall is not None:
            raise KernelBug("a kernel gate call inside another")
        context = self._fresh_upcall_context(kernel, state)
        kernel.machine.mem.write_u64(self._kernel_return_slot, KERNEL_RETURN)
        context.set_registers(GATE_REGS, msg)
        self._upcall = Upcall(tid, context)
        try:
            for _ in range(MAX_UPCALL_SLICES):
                if context.rip == KERNEL_RETURN:
                    break
                self.about_to_run(kernel, tid)
                self._upcall_slice(kernel, context)
            for _ in range(len(self.domains) + 1):  # a handler that never returns:
                if context.rip == KERNEL_RETURN:  # end domains from the inside out
                    break
                self._end_innermost(kernel, context, None)
            else:
                context.rip, context[Reg.RAX] = KERNEL_RETURN, -Errno.EPIPE % (1 << 64)
        finally:
            self._upcall = None
        return signed(context[Reg.RAX]), context.registers(GATE_REGS)  # type: ignore[return-value]

    def _fresh_upcall_context(self, kernel: Kernel, state: GateState) -> CpuContext:
        """The kernel's gate-call context, as `new_context` would make it (all registers
        zero but RIP, RSP, CR3 and PKRU). One context serves every call: the kernel
        makes one gate call at a time (`_upcall`), and it ends before any thread runs."""
        machine = kernel.machine
        rsp = KERNEL_CALL_STACK + PAGE_SIZE - 8
        if self._upcall_context is None:
            self._upcall_context = machine.new_context(
                ring=0, page_table=machine.kernel_space, rip=state.address, rsp=rsp,
                pkru=state.caller_pkru)
            return self._upcall_context
        return machine.reset_context(self._upcall_context, ring=0,
                                     page_table=machine.kernel_space, rip=state.address,
                                     rsp=rsp, pkru=state.caller_pkru)

    def _upcall_slice(self, kernel: Kernel, context: CpuContext) -> None:
        assert self._upcall is not None
        result = kernel.machine.run(context, budget=kernel.sched.quantum, stop_at=KERNEL_RETURN)
        if result.kind is ExitKind.SYSCALL:
            context[Reg.RAX] = -Errno.EDEADLK & 0xFFFF_FFFF_FFFF_FFFF
        elif result.kind in (ExitKind.FAULT, ExitKind.HALTED):
            fault = result.fault or kernel.machine.halt_fault(context)
            self._end_innermost(kernel, context, fault)

    def _end_innermost(self, kernel: Kernel, context: CpuContext, fault: Fault | None) -> None:
        """End the domain to blame for the kernel's gate call being stuck or faulting."""
        assert self._upcall is not None
        group = self._culprit(kernel, self._upcall.tid, None, context)
        if group is None:
            # No call in progress: the gate itself refused (e.g. -EBUSY) or the stack
            # was left in a state the kernel cannot resume. End the call here.
            context.rip = KERNEL_RETURN
            context[Reg.RAX] = -Errno.EPIPE & 0xFFFF_FFFF_FFFF_FFFF
            return
        if fault is None:
            kernel.kill(group)
        else:
            kernel.terminate(group, fault)

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
