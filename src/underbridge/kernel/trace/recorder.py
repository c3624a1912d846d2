"""What one kernel's run looks like on a timeline: the recorder behind `--trace`.

A `KernelTracer` watches one Kernel and its Machine and writes into a ChromeTrace:
  - the run loop tells it, per kernel entry, `resuming` (a thread is about to run),
    `ran` (the CPU stopped: syscall, fault, preemption) and `handled` (the kernel is
    done with the exit): a "run" slice per stretch on the CPU, a "syscall NAME" slice
    per kernel entry (names from abi/syscalls.py, or the Linux table for musl guests),
    an instant per fault (decoded) and per VM exit (with its instruction), a
    scheduler-switch instant on the kernel's "scheduler" track;
  - every charge the kernel makes (Machine.charge, charge_all, charge_in) becomes a
    slice named by its events (the CR3 switch of the run loop, an IPC design's path);
  - a block hook installed only while tracing (machine/block_events.py) reports the
    costed instructions guest code runs: each `wrpkru` becomes a "PKRU switch" instant
    naming the domains on both sides, and a pair of switches into a domain and back a
    "gate call" slice on the caller's track plus a "handler" slice on a track of the
    server's process (the migrated thread), joined by flow arrows both ways; vmfunc,
    mov to CR3, swapgs and sysret in guest code are instants;
  - an IPC syscall that hands the CPU to another thread gets a flow arrow from its
    slice to that thread's next run slice (the call, and the reply back).
`lifecycle` is the one-call hook for events the run loop does not see (a server
migrated between user and kernel space, a server restarted): it marks the process.

Tracks: one per thread; a process per cap group, named with its placement ("kernel
space, domain KEY" or "user space"), labelled and sorted so that kernel-space servers
come first; the kernel's own process holds the scheduler track. Several machines in
one trace (bench ipc runs two) are numbered #1, #2: ids are `number * 100000 + id`
(a thread's `+ 20000 + tid`, so that no thread id is also a process id), and each
machine's clock starts at 0.

Invariants:
  - Recording never charges, never writes guest state, never stops the CPU: a traced
    run's tally equals the untraced run's (tests/kernel/test_trace.py).
  - Every costed event the tally counts appears in the trace exactly once, as a charge
    slice's "events", an instruction instant, a PKRU switch, or (the `syscall`
    instruction) a syscall slice, as long as the limit is not reached. One exception
    is documented: a syscall made inside a gate call the kernel runs for an application
    is answered by upcall.py without a kernel entry of the run loop, so it has no slice.
  - Times are the machine's clock (simulated cycles), read at block granularity inside
    guest code: an instruction's event is stamped at the end of its block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from underbridge.abi.syscalls import LINUX_NATIVE_BASE, Sys
from underbridge.errors import UserError
from underbridge.kernel.linux_abi import LinuxSys
from underbridge.kernel.trace.chrome import ChromeTrace
from underbridge.machine.accounting import Charges
from underbridge.machine.block_events import BlockEventHook
from underbridge.machine.context import Reg
from underbridge.machine.exits import Exit, ExitKind
from underbridge.machine.faults import VM_EXIT
from underbridge.machine.pkru import access_disabled

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

ID_STRIDE = 100_000  # machine n's processes and threads: n * ID_STRIDE + their own id
THREAD_TIDS = 20_000  # thread n's track is base + THREAD_TIDS + n: never a process's id
MIGRATED_TIDS = 50_000  # tracks of threads running another domain's handler start here
HANDOFF_SYSCALLS = frozenset(
    {Sys.IPC_CALL, Sys.IPC_REPLY_WAIT, Sys.CHANNEL_CALL, Sys.CHANNEL_WRITE, Sys.CHANNEL_READ,
     Sys.OBJECT_WAIT, Sys.PORT_WAIT, Sys.NOTIF_SIGNAL, Sys.NOTIF_WAIT}
)  # fmt: skip
Track = tuple[int, int]  # (pid, tid)


def syscall_name(number: int, linux: bool) -> str:
    """A syscall's name from the ABI tables (a musl guest's Linux numbers, or native)."""
    if linux and number < LINUX_NATIVE_BASE:
        return _enum_name(LinuxSys, number, "linux ")
    return _enum_name(Sys, number - LINUX_NATIVE_BASE if linux else number, "")


def _enum_name(table: type[Sys] | type[LinuxSys], number: int, prefix: str) -> str:
    try:
        return prefix + table(number).name
    except ValueError:
        return f"{prefix}unknown syscall {number}"


def _charge_name(events: tuple[tuple[str, int], ...]) -> str:
    return " + ".join(event if times == 1 else f"{event} x{times}" for event, times in events)


class KernelTracer:
    """Records one kernel's run into `trace` as machine number `number`."""

    def __init__(self, kernel: Kernel, trace: ChromeTrace, number: int) -> None:
        machine = kernel.machine
        if machine.accounting is None:
            raise UserError(
                "a trace is drawn on the simulated clock, which needs cycle accounting",
                hint="drop --no-accounting",
            )
        self.kernel, self.machine, self.trace, self.number = kernel, machine, trace, number
        self.base = number * ID_STRIDE
        self.counts: Counter[str] = Counter()  # what was recorded, by kind
        self.current: Thread | None = None
        self._named: set[int] = set()  # pids and tids given names (disjoint ranges)
        self._last: Thread | None = None
        self._run_start = self._exit_at = self._exit_index = 0
        self._number = 0  # the syscall being handled, and its arguments
        self._args: tuple[int, ...] = ()
        self._switching = False  # charges now are the run loop's address-space switch
        self._handoff: tuple[str, Track, int] | None = None  # a flow waiting for its target
        self._wrpkru = 0  # wrpkru in the last block, settled when the next one starts
        self._pkru_before = self._wrpkru_at = self._home_pkru = 0
        self._calls: dict[int, list[tuple[str, int]]] = {}  # per thread: (domain, since)
        self._migrated: dict[tuple[int, int], int] = {}  # (server pid, tid) -> track tid
        trace.name_process(
            self.base, f"#{number} kernel ({kernel.ipc.name})", label="kernel", sort_index=-1
        )
        trace.name_thread(self.base, self.base, "scheduler")
        self._hook = BlockEventHook(
            machine.uc, machine.layout, machine._read_running_code, self._block, self._settle
        )
        self._wrap_charges()

    # -- the run loop's three calls ------------------------------------------------

    def resuming(self, thread: Thread) -> None:
        now = self.machine.clock()
        track = self._track(thread)
        if self._last is not thread:
            self.trace.instant(
                f"switch to {thread.name}", self.base, self.base, now, cat="sched",
                args={"from": self._last.name if self._last else None, "to": thread.name},
            )  # fmt: skip
            self.counts["sched_switch"] += 1
        if self._handoff is not None:
            name, source, at = self._handoff
            if source != track:
                self.trace.flow(name, (*source, at), (*track, now))
                self.counts["ipc_flow"] += 1
            self._handoff = None
        self.current, self._last = thread, thread
        self._home_pkru = thread.context.pkru  # the PKRU of the thread's own code
        self._run_start, self._switching = now, True

    def ran(self, thread: Thread, result: Exit) -> None:
        self._settle()
        now = self.machine.clock()
        self._switching = False
        pid, tid = self._track(thread)
        context = thread.context
        self.trace.slice(
            self._placement(thread.group) + f", ring {context.cpl}", pid, tid,
            self._run_start, now, cat="run", args={"exit": result.kind.value},
        )  # fmt: skip
        self._exit_at, self._exit_index = now, len(self.trace.events)
        if result.kind is ExitKind.SYSCALL:
            self._number, self._args = context[Reg.RAX], context.syscall_args()
        elif result.fault is not None:
            fault = result.fault
            vm_exit = fault.vector == VM_EXIT
            self.trace.instant(
                f"VM exit: {fault.instruction}" if vm_exit else f"fault: {fault.mnemonic}",
                pid, tid, now, cat="vm_exit" if vm_exit else "fault",
                args={"fault": fault.describe()},
            )  # fmt: skip
            self.counts["vm_exit" if vm_exit else "fault"] += 1

    def handled(self, thread: Thread, result: Exit) -> None:
        self._settle()
        now = self.machine.clock()
        track = self._track(thread)
        if result.kind is ExitKind.SYSCALL:
            linux = thread.group.linux is not None
            name = syscall_name(self._number, linux)
            self.trace.slice(
                f"syscall {name}", *track, self._exit_at, now, self._exit_index, cat="syscall",
                args={"number": self._number, "args": [f"{a:#x}" for a in self._args]},
            )  # fmt: skip
            self.counts["syscall"] += 1
            native = self._number - LINUX_NATIVE_BASE if linux else self._number
            if native in HANDOFF_SYSCALLS:
                self._handoff = (f"{name} from {thread.name}", track, (self._exit_at + now) // 2)
        self._close_calls(thread, now)
        self.current = None

    def lifecycle(self, what: str, group: CapGroup, **details: Any) -> None:
        """Mark an event of a cap group's life the run loop does not see: "migrate"
        (details: where to), "restart", ...; one instant on the group's process."""
        pid, tid = self._track(group.threads[0]) if group.threads else (self._process(group), 0)
        self.trace.instant(
            f"{what} {group.name}", pid, tid, self.machine.clock(), s="p", cat="lifecycle",
            args={key: str(value) for key, value in details.items()},
        )  # fmt: skip
        self.counts[what] += 1

    def finish(self) -> None:
        """Stop recording (the run is over): close what is open, remove the hook."""
        self._settle()
        now = self.machine.clock()
        for tid in list(self._calls):
            thread = next(
                (t for g in self.kernel.groups.values() for t in g.threads if t.tid == tid), None
            )
            if thread is not None:
                self._close_calls(thread, now)
        self._hook.remove()
        for name in ("charge", "charge_all", "charge_in"):
            self.machine.__dict__.pop(name, None)

    # -- tracks ----------------------------------------------------------------------

    def _process(self, group: CapGroup) -> int:
        pid = self.base + group.pid
        if pid not in self._named:
            self._named.add(pid)
            placement = self._placement(group)
            in_kernel = placement != "user space"
            self.trace.name_process(
                pid, f"#{self.number} {group.name} ({placement})",
                label="kernel space" if in_kernel else "user space",
                sort_index=group.pid if in_kernel else 1000 + group.pid,
            )  # fmt: skip
        return pid

    def _track(self, thread: Thread) -> Track:
        pid, tid = self._process(thread.group), self.base + THREAD_TIDS + thread.tid
        if tid not in self._named:
            self._named.add(tid)
            self.trace.name_thread(pid, tid, thread.name, sort_index=thread.tid)
        return pid, tid

    def _placement(self, group: CapGroup) -> str:
        domain = self.kernel.placement.domain_of(group)
        return "user space" if domain is None else f"kernel space, domain key {domain.key}"

    def _migrated_track(self, server: CapGroup, thread: Thread) -> Track:
        """The track of `thread` running `server`'s handler through a gate."""
        pid = self._process(server)
        key = (pid, thread.tid)
        tid = self._migrated.get(key)
        if tid is None:
            tid = self._migrated[key] = self.base + MIGRATED_TIDS + len(self._migrated)
            self.trace.name_thread(
                pid, tid, f"{thread.name} in {server.name} (via gate)",
                sort_index=MIGRATED_TIDS + thread.tid,
            )  # fmt: skip
        return pid, tid

    def _here(self) -> Track:
        """Where events of the CPU or the kernel go now: the current thread's track, or
        the kernel's own when no thread is being run."""
        thread = self.current
        return (self.base, self.base) if thread is None else self._track(thread)

    # -- charges -----------------------------------------------------------------------

    def _wrap_charges(self) -> None:
        """Shadow the machine's charge methods on this instance with recording ones (the
        class's stay as they are: an untraced machine runs them directly)."""
        machine, clock = self.machine, self.machine.clock
        charge, charge_all, charge_in = machine.charge, machine.charge_all, machine.charge_in

        def traced_charge(event: str, times: int = 1) -> None:
            start = clock()
            charge(event, times)
            self._charged(start, ((event, times),))

        def traced_charge_all(charges: Charges) -> None:
            start = clock()
            charge_all(charges)
            self._charged(start, charges.events)

        def traced_charge_in(category: str, charges: Charges) -> None:
            start = clock()
            charge_in(category, charges)
            self._charged(start, charges.events)

        wrappers: dict[str, Callable[..., None]] = {
            "charge": traced_charge, "charge_all": traced_charge_all,
            "charge_in": traced_charge_in,
        }  # fmt: skip
        machine.__dict__.update(wrappers)

    def _charged(self, start: int, events: tuple[tuple[str, int], ...]) -> None:
        counted: Counter[str] = Counter()
        for event, times in events:  # a path may name an event twice (zircon's)
            counted[event] += times
        args: dict[str, Any] = {"events": dict(counted)}
        name = _charge_name(events)
        if self._switching and self.current is not None:
            name = f"address-space switch to {self.current.group.name}: {name}"
        self.trace.slice(
            name, *self._here(), start, self.machine.clock(),
            cat="charge,cr3" if any(e == "cr3_write" for e, _ in events) else "charge",
            args=args,
        )  # fmt: skip
        self.counts.update(counted)

    # -- guest instructions ------------------------------------------------------------

    def _block(self, _address: int, events: tuple[str, ...]) -> None:
        for event in events:
            if event == "wrpkru":
                if not self._wrpkru:
                    self._pkru_before = self._hook.cpu_pkru()
                    self._wrpkru_at = self.machine.clock()
                self._wrpkru += 1
            elif event != "syscall":  # a syscall instruction is its syscall slice
                self.trace.instant(event, *self._here(), self.machine.clock(), cat="insn")
                self.counts[event] += 1

    def _settle(self) -> None:
        """The last block ran its wrpkru: now the CPU's PKRU says where it went."""
        if not self._wrpkru:
            return
        count, self._wrpkru = self._wrpkru, 0
        before, after, at = self._pkru_before, self._hook.cpu_pkru(), self._wrpkru_at
        self.counts["wrpkru"] += count
        source, target = self._domain_name(before), self._domain_name(after)
        for _ in range(count):  # several in one block: only the last value is known
            self.trace.instant(
                f"PKRU switch {source} -> {target}", *self._here(), at, cat="pkru",
                args={"from": source, "to": target, "pkru": f"{after:#010x}"},
            )  # fmt: skip
        if self.current is not None and source != target:
            self._gate(self.current, source, target, at)

    def _domains(self) -> dict[int, CapGroup]:
        placement = self.kernel.placement
        owners = {}
        for group in placement.placed_groups():
            domain = placement.domain_of(group)
            if domain is not None:
                owners[domain.pkru] = group
        return owners

    def _domain_name(self, pkru: int) -> str:
        group = self._domains().get(pkru)
        if group is not None:
            return group.name
        if self.current is not None and pkru == self._home_pkru:
            return self.current.group.name  # an application's own PKRU
        return "kernel" if not access_disabled(pkru, 0) else f"pkru {pkru:#010x}"

    def _gate(self, thread: Thread, source: str, target: str, at: int) -> None:
        """A PKRU switch: into a domain not on the thread's call path is a call, back
        into one on it returns from every call above it."""
        calls = self._calls.setdefault(thread.tid, [])
        if not calls:
            calls.append((source, at))
        if any(domain == target for domain, _ in calls):
            while calls[-1][0] != target:
                self._close_call(thread, calls, at)
        else:
            calls.append((target, at))

    def _close_calls(self, thread: Thread, now: int) -> None:
        calls = self._calls.pop(thread.tid, [])
        while len(calls) > 1:
            self._close_call(thread, calls, now)

    def _close_call(self, thread: Thread, calls: list[tuple[str, int]], end: int) -> None:
        server, start = calls.pop()
        caller_track = self._track(thread)
        self.trace.slice(
            f"gate call -> {server}", *caller_track, start, end, cat="gate",
            args={"caller": calls[-1][0], "server": server},
        )  # fmt: skip
        self.counts["gate_call"] += 1
        group = next((g for g in self._domains().values() if g.name == server), None)
        if group is None:
            return
        handler = self._migrated_track(group, thread)
        self.trace.slice(f"{server} handler for {thread.name}", *handler, start, end, cat="gate")
        quarter = (end - start) // 4
        self.trace.flow(
            f"call {server}", (*caller_track, start + quarter), (*handler, start + quarter)
        )
        self.trace.flow(
            f"return from {server}", (*handler, end - quarter), (*caller_track, end - quarter)
        )
