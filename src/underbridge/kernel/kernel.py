"""The microkernel: cap groups, threads, the run loop, and what each kernel entry costs.

The run loop asks the scheduler for a thread, resumes it on the machine, and handles
the exit: a syscall goes to the dispatch table, a fault ends only the faulting cap
group (reported with the decoded fault), a spent budget rotates the ready queue.
With a supervisor attached (supervisor.py), its kills and restarts run between kernel
events and it may cut a run short to stop at a kill's instant (such a run keeps the
CPU). A client's closing of a connection is told to its server (closes.py); if the
server goes first, the client keeps the connection, broken (Connection.break_off).

Attribution (for breakdowns): the cycles of IPC_CALL and IPC_REPLY_WAIT, their
`syscall` instruction included, are counted as "ipc", and so is the address-space
switch to the thread an IPC syscall hands the CPU to; every other charge the kernel
makes (other syscalls, scheduler switches) as "kernel".

Cost model of a kernel entry (everything a real kernel does in machine code here runs
in Python, so it is charged by name, never zero, never tuned):
  - the guest's `syscall` instruction: charged by the machine's block accounting;
  - IPC_CALL and IPC_REPLY_WAIT: the IPC design charges its whole kernel path (for
    sel4, the measured instructions of seL4's fastpath, its CR3 writes and sysret);
  - any other syscall: swapgs on entry and exit and the sysret (the primitives of a
    no-op syscall); with KPTI a CR3 write on entry and one on exit. Their handler work
    is a slow path no benchmark times, and is not charged;
  - without KPTI, a CR3 write whenever the CPU next runs a thread of another address
    space (with KPTI the exit path's CR3 write is that switch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import LINUX_NATIVE_BASE, Errno, Sys
from underbridge.elf.image import parse_elf
from underbridge.errors import SyscallError, UserError
from underbridge.kernel import closes, dispatch, linux_abi, orphans
from underbridge.kernel.handlers import portio
from underbridge.kernel.ipc import DomainPlacement, IpcDesign, NoDomains
from underbridge.kernel.ipc.migrate import region_stack_top
from underbridge.kernel.ipc.registry import design_named
from underbridge.kernel.migration import Migration, Mover, Pending, perform, refuse
from underbridge.kernel.objects.base import KernelObject
from underbridge.kernel.objects.capgroup import CapGroup, Ending, GroupState
from underbridge.kernel.objects.connection import Connection, Service
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.kernel.objects.vmspace import VmSpace
from underbridge.kernel.process_image import (
    USER_STACK_TOP,
    build_image,
    no_room_is_a_user_error,
)
from underbridge.kernel.sched import DEFAULT_QUANTUM, Scheduler
from underbridge.kernel.trace.session import tracer_for
from underbridge.machine.accounting import KERNEL as KERNEL_CATEGORY
from underbridge.machine.context import Reg
from underbridge.machine.costs import COSTS
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import Fault
from underbridge.machine.paging import PageTable

if TYPE_CHECKING:
    from underbridge.bridge.domain import Domain
    from underbridge.kernel.objects.pmo import Pmo
    from underbridge.kernel.supervisor import Supervisor

ConsoleSink = Callable[[CapGroup, bytes], None]
FASTPATH_SYSCALLS = frozenset({Sys.IPC_CALL, Sys.IPC_REPLY_WAIT})  # the design charges these
IPC_CATEGORY = "ipc"  # where the cycles of IPC paths are attributed (machine/accounting.py)
_SYSCALL_CYCLES = COSTS["syscall"].cycles
SyscallObserver = Callable[[Thread, int, tuple[int, ...]], None]


class Kernel:
    def __init__(
        self,
        machine: Machine,
        *,
        ipc: str = "sel4",
        quantum: int = DEFAULT_QUANTUM,
        console: ConsoleSink | None = None,
    ) -> None:
        self.machine = machine
        self.sched = Scheduler(quantum)
        self.ipc: IpcDesign = design_named(ipc)
        # Where servers in kernel space are placed: the design's domains, or none.
        self.placement: DomainPlacement = self.ipc.placement or NoDomains(self.ipc.name)
        self.groups: dict[int, CapGroup] = {}
        self.services: dict[str, Service] = {}
        self.programs: dict[str, Path] = {}
        self._console = console
        self._next_pid = 1
        self._next_tid = 1
        self._next_badge = 1
        self._last_space: VmSpace | None = None
        self._switch_cause = KERNEL_CATEGORY  # what the next address-space switch is for
        self.syscall_observers: list[SyscallObserver] = []  # benchmarks: see each entry
        self.linux_syscall_observers: list[SyscallObserver] = []  # Linux numbers (fuzz)
        # None unless a trace is recording (kernel/trace/session.py); the run loop tests
        # it once per kernel entry, and it is also the hook for events the run loop does
        # not see: `if kernel.tracer: kernel.tracer.lifecycle("migrate", group, to=...)`.
        self.tracer = tracer_for(self)
        # Asked when a protection key is needed and none is left (set by a placement
        # policy's engine, kernel/placement/engine.py): True if it moved a server out.
        self.make_room: Callable[[str], bool] | None = None
        self.migrations: list[Migration] = []  # every migration asked for (migration.py)
        self._pending = Pending()
        # The restart service (kernel/supervisor.py) attaches itself here; None: no one
        # restarts servers, and the run loop pays one attribute test per kernel event.
        self.supervisor: Supervisor | None = None
        self.closing: set[Service] = set()  # services with close notifications to tell
        self.orphans: dict[Thread, Pmo] = {}  # buffers kept for a call in progress (orphans.py)

    # -- creating things -----------------------------------------------------------

    def register_program(self, name: str, elf: Path) -> None:
        """Make an ELF file spawnable by guests under `name` (the boot image)."""
        self.programs[name] = elf

    def spawn(
        self,
        elf: Path | bytes | str,
        argv: list[str] | None = None,
        *,
        name: str = "",
        ring: int = 3,
        table: PageTable | None = None,
        pkey: int = 0,
        pkru: int = 0,
        stack_top: int = USER_STACK_TOP,
        in_kernel: bool = False,
        io_ports: range = range(0),
        if_unsafe: str = "refuse",
        rewrite: bool = True,
        abi: str = "native",
    ) -> CapGroup:
        """Create a cap group from an ELF file, bytes, or a registered program name.

        in_kernel: place it in kernel space, in an execution domain of its own (needs an
        IPC design with domains, i.e. underbridge); ring, table, pkey, pkru and
        stack_top then follow from the domain. if_unsafe: what to do when its binary
        cannot be made safe for kernel space: "refuse" (UserError with the report) or
        "user" (run it in user space instead, where ring 3 makes it harmless).
        rewrite=False places the binary as built, without the rewriter (benchmarks).
        abi: "native", or "linux" for a musl-linked program (kernel/linux_abi.py), which
        runs in user space only.
        When no protection key is left, the server runs in user space instead and its
        `placement_note` says why (keys running out never fails a spawn).
        Bad input raises a UserError: ElfError for a binary that cannot be loaded,
        ResourceExhausted when frames run out; nothing is left behind.
        """
        if if_unsafe not in ("refuse", "user"):
            raise ValueError(f"if_unsafe must be 'refuse' or 'user', not {if_unsafe!r}")
        if abi not in ("native", "linux"):
            raise ValueError(f"abi must be 'native' or 'linux', not {abi!r}")
        if abi == "linux" and in_kernel:
            raise UserError(
                "a Linux-ABI program runs in user space only",
                hint="servers placed in kernel space use the native ABI",
            )
        if isinstance(elf, str):
            if elf not in self.programs:
                raise UserError(f"no program named {elf!r} is registered")
            name, elf = name or elf, self.programs[elf]
        data = elf.read_bytes() if isinstance(elf, Path) else elf
        name = name or (elf.stem if isinstance(elf, Path) else "guest")
        with no_room_is_a_user_error(name):
            image = parse_elf(data, name=name)
            domain, placement_note = None, ""
            if in_kernel:
                admitted, placement_note = self._admit(
                    name, image.segments[0].vaddr, data, rewrite=rewrite, if_unsafe=if_unsafe
                )
                if admitted is not None:
                    domain, stack_top, data = admitted
                    image = parse_elf(data, name=name)  # as the loader rewrote it
                    ring, table, pkey, pkru = (
                        self.placement.ring,
                        self.machine.kernel_space,
                        domain.key,
                        domain.pkru,
                    )
                elif placement_note and stack_top == USER_STACK_TOP:
                    # where it would have been in kernel space: it can move in later
                    stack_top = region_stack_top(image.segments[0].vaddr)
            vmspace = None
            try:
                vmspace = VmSpace(self.machine, table=table, pkey=pkey)
                entry, rsp = build_image(
                    self.machine, vmspace, image, argv if argv is not None else [name], stack_top
                )
            except BaseException:
                if vmspace is not None:
                    vmspace.destroy()  # give back whatever was built before the failure
                if domain is not None:
                    self.placement.refuse(domain)
                raise
        group = CapGroup(self._next_pid, name, vmspace)
        group.io_ports = io_ports
        group.placement_note = placement_note
        group.elf = data
        if abi == "linux":
            group.linux = linux_abi.LinuxState.after_image(image.end)
        self._next_pid += 1
        self.groups[group.pid] = group
        if domain is not None:
            self.placement.adopt(group, domain, image.segments[0].vaddr)
        self.add_thread(group, ring=ring, rip=entry, rsp=rsp, pkru=pkru)
        return group

    def _admit(
        self, name: str, base: int, data: bytes, *, rewrite: bool, if_unsafe: str
    ) -> tuple[tuple[Domain, int, bytes] | None, str]:
        """Place a new server in kernel space: (its domain, stack top, binary), or None
        and why it runs in user space instead. With no key left, `make_room` (a
        placement policy's) may move another server out first; if it does not, the
        server runs in user space and the note says why: keys running out fail nothing."""
        for attempt in range(2):
            try:
                return self.placement.admit(self, name, base, data, rewrite=rewrite), ""
            except UserError:
                if if_unsafe == "refuse":
                    raise
                return None, ""
            except SyscallError as error:
                if error.errno != Errno.ENOKEY:
                    raise
                wanted = f"{name} is spawned in kernel space"
                if attempt or self.make_room is None or not self.make_room(wanted):
                    return None, f"{name} runs in user space: {error}"
        raise AssertionError("unreachable")

    def add_thread(
        self, group: CapGroup, *, ring: int, rip: int, rsp: int, pkru: int = 0, arg: int = 0
    ) -> Thread:
        context = self.machine.new_context(
            ring=ring, page_table=group.vmspace.table, rip=rip, rsp=rsp, pkru=pkru
        )
        context[Reg.RDI] = arg
        thread = Thread(self._next_tid, group, context)
        self._next_tid += 1
        group.threads.append(thread)
        self.sched.add(thread)
        return thread

    def new_badge(self) -> int:
        badge = self._next_badge
        self._next_badge += 1
        return badge

    def migrate(self, group: CapGroup, *, to_kernel: bool, reason: str = "requested") -> Migration:
        """Move a running server into kernel space (to_kernel) or out to user space, live
        (kernel/migration.py): done now if it is quiescent, else pending until it is;
        refused, with the report and nothing changed, if it cannot be done."""
        migration = Migration("in" if to_kernel else "out", group.name, reason, target=group)
        self.migrations.append(migration)
        mover: Mover | None = getattr(self.ipc, "mover", None)
        if mover is None:
            return refuse(migration, f"the {self.ipc.name} design cannot move servers")
        problem = mover.check(self, group, to_kernel=to_kernel)
        if problem:
            return refuse(migration, problem)
        if mover.quiescent(self, group):
            perform(self, mover, migration)
        else:
            self._pending.waiting.append(migration)
        return migration

    # -- the run loop --------------------------------------------------------------

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Run until no thread is ready, or `until()` holds after a kernel event.

        With a supervisor, its kills and restarts happen between kernel events, and an
        idle CPU lets a pending restart happen at once (idle time is not simulated)."""
        while True:
            thread = self.sched.pick()
            if thread is None:
                if self.supervisor is None or not self.supervisor.idle():
                    return
                continue
            self._resume(thread)
            if self._pending:
                self._pending.poll(self, self.ipc.mover)  # type: ignore[attr-defined]
            if self.supervisor is not None:
                self.supervisor.after_event()
            if until():
                return

    def _resume(self, thread: Thread) -> None:
        tracer = self.tracer
        if tracer is not None:
            tracer.resuming(thread)
        space = thread.group.vmspace
        last = self._last_space
        switch = self.ipc.traits.address_space_switch
        if last is not None and space is not last and switch is not None:
            self.machine.charge_in(self._switch_cause, switch)
        self._last_space = space
        self._switch_cause = KERNEL_CATEGORY
        context = thread.context
        self.placement.about_to_run(self, thread.tid)  # ring-3 gates too (the PKU designs)
        budget = self.sched.quantum
        if self.supervisor is not None:  # stop in time for a kill or restart that is due
            budget = self.supervisor.budget(budget, context.rip)
        result = self.machine.run(context, budget=budget)
        if tracer is not None:
            tracer.ran(thread, result)
        kind = result.kind
        if kind is ExitKind.SYSCALL:
            self._syscall(thread)
        elif kind is ExitKind.FAULT:
            assert result.fault is not None
            if not portio.emulate_trapped_io(self, thread, result.fault):
                self._fault(thread, result.fault)
        elif kind is ExitKind.PREEMPTED:
            # Gates run "with interrupts off"; a run cut short for the supervisor keeps
            # the CPU (its slice goes on after the supervisor's work).
            if budget == self.sched.quantum and not self.placement.in_gate(context.rip):
                self.sched.preempt()
        else:  # HALTED: guest code executed hlt in ring 0
            self._fault(thread, self.machine.halt_fault(context))
        if tracer is not None:
            tracer.handled(thread, result)

    def _fault(self, thread: Thread, fault: Fault) -> None:
        """End the cap group to blame: the thread's own, or, if the thread was running
        another domain's handler in a call, that server's (the IPC design says which;
        ending it makes the thread's call return -EPIPE and the caller go on)."""
        culprit = self.placement.code_owner(self, thread)
        self.end_group(culprit, Ending(GroupState.FAULTED, fault=fault))

    def _syscall(self, thread: Thread) -> None:
        self.sched.entered_kernel()
        context = thread.context
        number = context[Reg.RAX]
        args = context.syscall_args()
        if thread.group.linux is not None:
            if number < LINUX_NATIVE_BASE:
                for observe in self.linux_syscall_observers:
                    observe(thread, number, args)
                self._linux_syscall(thread, number, args)
                return
            number -= LINUX_NATIVE_BASE
        for observe in self.syscall_observers:
            observe(thread, number, args)
        if self.placement.foreign(thread):  # inside a call into another domain
            self.charge_entry_and_exit()
            context[Reg.RAX] = -Errno.EDEADLK & 0xFFFF_FFFF_FFFF_FFFF
            return
        if number in FASTPATH_SYSCALLS:
            self._ipc_syscall(thread, number, args)
            return
        self.charge_entry_and_exit()
        result = dispatch.dispatch(self, thread, number, args)
        if result is not None and thread.state is ThreadState.RUNNING:
            context[Reg.RAX] = result

    def _ipc_syscall(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        """IPC_CALL and IPC_REPLY_WAIT. All of it is IPC cost, its `syscall` instruction
        included, and so is the switch to the thread it hands the CPU to. The design's
        fast path takes the common case; anything else goes through dispatch."""
        machine = self.machine
        machine.reattribute(thread.context.rip, IPC_CATEGORY, _SYSCALL_CYCLES)
        previous = machine.charge_to(IPC_CATEGORY)
        try:
            if not self.ipc.fastpath(self, thread, number, args):
                result = dispatch.dispatch(self, thread, number, args)
                if result is not None and thread.state is ThreadState.RUNNING:
                    thread.context[Reg.RAX] = result
        finally:
            machine.charge_to(previous)
        self._switch_cause = IPC_CATEGORY  # the switch to the other side is IPC's
        if self.closing and number == Sys.IPC_REPLY_WAIT:
            closes.deliver_pending(self, thread)
        if self.orphans and number == Sys.IPC_REPLY_WAIT:
            orphans.release(self, thread)

    def _linux_syscall(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        self.charge_entry_and_exit()
        result = linux_abi.dispatch(self, thread, number, args)
        if result is not None and thread.state is ThreadState.RUNNING:
            thread.context[Reg.RAX] = result & 0xFFFF_FFFF_FFFF_FFFF

    def charge_entry_and_exit(self) -> None:
        self.machine.charge_all(self.ipc.traits.syscall_entry_exit)

    # -- ending things -------------------------------------------------------------

    def end_group(self, group: CapGroup, ending: Ending) -> None:
        """End a cap group: threads, owned objects, address space; wake its waiters."""
        if not group.running:
            return
        group.ending = ending  # the group stays a valid object (a zombie) for WAIT
        for thread in group.threads:
            self.sched.remove(thread)
            thread.mark_destroyed()
        if self.supervisor is not None:  # before teardown: it may keep memory (a disk)
            self.supervisor.ending(group)
        for obj in reversed(list(group.owned)):  # closing a connection edits `owned`
            self.destroy_object(obj)
        group.vmspace.destroy()
        self.ipc.ended(self, group)
        if self._last_space is group.vmspace:
            self._last_space = None
        for waiter, info_address in group.waiters:
            dispatch.finish_wait(self, waiter, group, info_address)
        group.waiters.clear()

    def destroy_object(self, obj: KernelObject) -> None:
        """Destroy an object its owner is done with; services and connections first
        undo what the IPC design set up for them."""
        if isinstance(obj, Service):
            self.ipc.close_service(self, obj)
            self.services.pop(obj.name, None)
            for conn in list(obj.connections):
                self.close_connection(conn, server_gone=True)
        if isinstance(obj, Connection):
            self.close_connection(obj)
        else:
            obj.destroy()

    def close_connection(self, conn: Connection, *, server_gone: bool = False) -> None:
        """Close a connection: its gate and keys first, then its buffer (both sides).
        server_gone: the server's side is going away, not the client's.

        A closed connection leaves its service's and its client's lists, or a client
        that connects and closes forever would grow them forever. If the server goes
        first, a live client keeps the connection, broken, with its buffer still
        mapped (calls on it fail with -EPIPE) until it closes it or ends. A client's
        close is told to the server (closes.py), and a user-space server serving a call
        on it keeps the buffer until its next REPLY_WAIT (orphans.py).
        """
        if not conn.alive:
            return
        holder = None if server_gone or conn.broken else orphans.serving(conn)
        if not conn.broken:
            self.ipc.closed(self, conn, server_gone=server_gone)
            conn.service.connections.remove(conn)
            if server_gone and conn.client.running:
                conn.break_off()
                return
            if not server_gone:
                closes.notify(self, conn.service, conn.badge)
        orphans.close(self, conn, holder)  # a server's call in progress keeps the buffer
        conn.client.owned.remove(conn)

    def thread_exit(self, thread: Thread) -> None:
        self.sched.remove(thread)
        thread.mark_destroyed()
        if all(t.state is ThreadState.DEAD for t in thread.group.threads):
            self.end_group(thread.group, Ending(GroupState.EXITED, 0))

    def exit(self, group: CapGroup, status: int) -> None:
        status = status - (1 << 64) if status >= 1 << 63 else status
        self.end_group(group, Ending(GroupState.EXITED, status))

    def kill(self, group: CapGroup) -> None:
        """End a cap group from outside (it exits with status -9)."""
        self.exit(group, -9)

    def terminate(self, group: CapGroup, fault: Fault) -> None:
        self.end_group(group, Ending(GroupState.FAULTED, fault=fault))

    # -- console -------------------------------------------------------------------

    def console_write(self, group: CapGroup, data: bytes) -> None:
        kept = group.append_console(data)
        if self._console is not None and kept:
            self._console(group, kept)

    def wake_with(self, thread: Thread, result: int) -> None:
        """Wake a blocked thread, returning `result` from the syscall it blocked in."""
        thread.context[Reg.RAX] = result & 0xFFFF_FFFF_FFFF_FFFF
        self.sched.wake(thread)

    def fail_blocked(self, thread: Thread, errno: Errno) -> None:
        if thread.alive and thread.state is ThreadState.BLOCKED:
            self.wake_with(thread, -errno)

    # -- queries -------------------------------------------------------------------

    def blocked(self) -> list[Thread]:
        """The blocked threads of live cap groups, in creation order.

        Once `run` has returned because no thread is ready, each of these waits for
        something no thread can do any more: a deadlock, unless it is a server waiting
        for callers. Each names what it waits on in `waiting_on`.
        """
        return [
            thread
            for group in self.groups.values()
            if group.running
            for thread in group.threads
            if thread.state is ThreadState.BLOCKED
        ]


__all__ = ["Kernel", "SyscallError"]
