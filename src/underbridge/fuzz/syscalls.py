"""The syscall fuzzer: guest/apps/fuzz_syscalls.c on a fresh machine, placement by placement.

One run: a fresh Machine and Kernel under one IPC design; the echo server (in kernel
space or in user space) so that IPC syscalls have a real service to hit; the programs a
fuzz guest may SPAWN registered (itself, hello, echo); then the fuzz guest, in ring 3
(native or Linux personality) or in kernel space (in_kernel=True, under underbridge,
linked at KERNEL_BASE), with a seed drawn from the campaign's splitmix64 stream.
Runs cycle through PLACEMENTS, so every design sees every placement it supports.

Counting: kernel.syscall_observers (and linux_syscall_observers) see each syscall a
fuzz guest makes; the result is read from RAX after the kernel event, unless the
thread blocked ("blocked") or ended ("ended"). Each run is bounded by a budget of
kernel events and guest instructions: a guest that blocks forever or spins only ends
its run, counted as hung/blocked, never as a kernel exception.

Invariants: a run depends only on its placement and seed (no wall time, no host
randomness); an exception escaping Kernel.spawn or Kernel.run is recorded in the
report and ends that run, and the next run starts on a fresh machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from underbridge.abi.syscalls import Errno
from underbridge.bench.ipc import ECHO_BASE
from underbridge.fuzz.report import FuzzReport
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.linux_abi import LinuxErrno
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import Thread, ThreadState
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine

FUZZ_PROGRAM = "fuzz_syscalls"
APP_BASE = 0x40_0000  # ring-3 programs
KERNEL_BASE = 0x0300_0000  # the in-kernel fuzz guest's 16 MiB region
KERNEL_MAP_WINDOW = KERNEL_BASE + (4 << 20)  # inside the lower half of that region
USER_MAP_WINDOW = 0x2000_0000
SYSCALLS_PER_RUN = 400  # the main thread's count; workers add a quarter each
QUANTUM = 20_000  # guest instructions per slice: a spinning thread yields the CPU soon
MAX_EVENTS = 12_000  # kernel events per run
MAX_INSTRUCTIONS = 30_000_000  # guest instructions per run
MASK64 = (1 << 64) - 1
MAX_ERRNO = 4095

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Placement:
    design: str
    in_kernel: bool  # the fuzz guest runs in kernel space
    abi: str  # "native" or "linux"
    echo_in_kernel: bool

    @property
    def label(self) -> str:
        where = "kernel" if self.in_kernel else f"ring3-{self.abi}"
        echo = "kernel" if self.echo_in_kernel else "user"
        return f"{self.design}/{where}/echo-{echo}"


PLACEMENTS: tuple[Placement, ...] = (
    Placement("sel4", False, "native", False),
    Placement("sel4-kpti", False, "native", False),
    Placement("underbridge", True, "native", True),
    Placement("underbridge", False, "native", True),
    Placement("sel4", False, "linux", False),
    Placement("underbridge", True, "native", False),
    Placement("sel4-kpti", False, "linux", False),
    Placement("underbridge", False, "linux", True),
    Placement("underbridge", False, "native", False),
)
MAX_IDLE = 2 * len(PLACEMENTS)  # runs in a row without a syscall before giving up


def splitmix64(seed: int) -> Iterator[int]:
    """The splitmix64 stream the guest uses too: seeds for successive runs."""
    state = seed & MASK64
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


@dataclass(frozen=True, slots=True)
class Programs:
    """The binaries a run needs, built once per campaign (through the build cache)."""

    fuzz_user: Path
    fuzz_kernel: Path
    echo: Path  # linked at ECHO_BASE: placeable in kernel space and in user space
    hello: Path

    @classmethod
    def build(cls) -> Programs:
        return cls(
            build_program(FUZZ_PROGRAM, base=APP_BASE),
            build_program(FUZZ_PROGRAM, base=KERNEL_BASE),
            build_program("echo", base=ECHO_BASE),
            build_program("hello", base=APP_BASE),
        )


class RunCounter:
    """Counts one run's syscalls and their results, and enforces its budget."""

    def __init__(self, kernel: Kernel, report: FuzzReport) -> None:
        self.kernel = kernel
        self.report = report
        self.events = 0
        self.issued = 0
        self._pending: tuple[Thread, bool] | None = None  # (thread, a Linux number?)
        kernel.syscall_observers.append(self._native)
        kernel.linux_syscall_observers.append(self._linux)

    def _native(self, thread: Thread, _number: int, _args: tuple[int, ...]) -> None:
        self._note(thread, linux=False)

    def _linux(self, thread: Thread, _number: int, _args: tuple[int, ...]) -> None:
        self._note(thread, linux=True)

    def _note(self, thread: Thread, *, linux: bool) -> None:
        if thread.group.name == FUZZ_PROGRAM:
            self.issued += 1
            self.report.syscalls += 1
            self._pending = (thread, linux)

    def after_event(self) -> bool:
        """Called after every kernel event: settle the last syscall; is the budget spent?"""
        self.events += 1
        if self._pending is not None:
            thread, linux = self._pending
            self._pending = None
            self.report.results[_result(thread, linux)] += 1
        return self.spent

    @property
    def spent(self) -> bool:
        return (
            self.events >= MAX_EVENTS
            or self.kernel.machine.tally().instructions >= MAX_INSTRUCTIONS
        )


def _result(thread: Thread, linux: bool) -> str:
    if thread.state is ThreadState.BLOCKED:
        return "blocked"
    if thread.state is ThreadState.DEAD:
        return "ended"
    value = thread.context[Reg.RAX]
    if value > MASK64 - MAX_ERRNO:  # -4095..-1: an error code
        return _errno_name(MASK64 + 1 - value, linux)
    return "ok"


def _errno_name(code: int, linux: bool) -> str:
    for table in (LinuxErrno, Errno) if linux else (Errno, LinuxErrno):
        try:
            return table(code).name
        except ValueError:
            continue
    return f"E{code}"


def fuzz_args(seed: int, count: int, placement: Placement) -> list[str]:
    window = KERNEL_MAP_WINDOW if placement.in_kernel else USER_MAP_WINDOW
    args = [FUZZ_PROGRAM, f"{seed:x}", str(count), f"{window:x}"]
    return args + (["linux"] if placement.abi == "linux" else [])


def stage(programs: Programs, placement: Placement) -> tuple[Kernel, CapGroup]:
    """A fresh kernel with echo serving and the spawnable programs registered."""
    kernel = Kernel(Machine(), ipc=placement.design, quantum=QUANTUM)
    kernel.register_program(FUZZ_PROGRAM, programs.fuzz_user)
    kernel.register_program("hello", programs.hello)
    kernel.register_program("echo", programs.echo)
    echo = kernel.spawn(programs.echo, ["echo"], in_kernel=placement.echo_in_kernel)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    return kernel, echo


def one_run(
    programs: Programs, placement: Placement, seed: int, count: int, report: FuzzReport
) -> int:
    """Fuzz one placement with one seed; returns the syscalls issued."""
    report.placements[placement.label] += 1
    context = f"{placement.label} seed {seed:#x} count {count}"
    counter: RunCounter | None = None
    try:
        kernel, echo = stage(programs, placement)
        counter = RunCounter(kernel, report)
        elf = programs.fuzz_kernel if placement.in_kernel else programs.fuzz_user
        guest = kernel.spawn(
            elf,
            fuzz_args(seed, count, placement),
            name=FUZZ_PROGRAM,
            in_kernel=placement.in_kernel,
            abi=placement.abi,
        )
        kernel.run(until=lambda: counter.after_event() or not guest.running)
    except Exception as error:
        report.kernel_exception(error, context)
        report.syscall_runs["kernel-exception"] += 1
        return counter.issued if counter else 0
    report.syscall_runs[_ending(guest, counter)] += 1
    _count_faults(kernel, echo, report)
    return counter.issued


def _ending(guest: CapGroup, counter: RunCounter) -> str:
    if guest.state is GroupState.FAULTED:
        return "guest-fault"
    if guest.state is GroupState.EXITED:
        return "completed" if guest.exit_status == 0 else "exited-early"
    return "hung-budget" if counter.spent else "blocked"


def _count_faults(kernel: Kernel, echo: CapGroup, report: FuzzReport) -> None:
    for group in kernel.groups.values():
        if group.name == FUZZ_PROGRAM and group.fault is not None:
            report.guest_faults[group.fault.mnemonic] += 1
    if not echo.running:  # a client brought the server down: an isolation finding
        report.servers_lost += 1


def run(
    report: FuzzReport,
    syscalls: int,
    progress: Progress | None = None,
    programs: Programs | None = None,
) -> None:
    """Issue at least `syscalls` syscalls (if any: at least one run per placement)."""
    programs = programs or Programs.build()
    seeds = splitmix64(report.seed)
    issued = 0
    index = 0
    idle = 0  # consecutive runs that issued nothing: a kernel that cannot even start one
    while (issued < syscalls or (syscalls and index < len(PLACEMENTS))) and idle < MAX_IDLE:
        placement = PLACEMENTS[index % len(PLACEMENTS)]
        count = max(20, min(SYSCALLS_PER_RUN, syscalls - issued))
        done = one_run(programs, placement, next(seeds), count, report)
        issued += done
        index += 1
        idle = 0 if done else idle + 1
        if progress is not None:
            progress(done)
