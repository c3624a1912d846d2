"""The kernel's run loop: schedule processes, enter Python on syscalls and faults.

Round-robin over runnable processes, each run for at most `quantum` guest instructions
(deterministic: preemption points depend only on instruction counts). A syscall is
dispatched and its result written to RAX; a fault terminates only the process that
raised it, which is reported with the decoded fault, and the others go on.

Cost model of the Python kernel path: the guest's `syscall` instruction is charged by
the machine's block accounting; the kernel charges the return path a real kernel runs
(swapgs on entry and on exit, sysret). The kernel's own handler instructions are not
charged yet: they are the per-path costs the IPC designs add with their own citations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from underbridge.errors import KernelBug
from underbridge.kernel import dispatch
from underbridge.kernel.loader import parse_elf
from underbridge.kernel.process import (
    USER_STACK_TOP,
    Process,
    State,
    create_process,
    destroy_process,
)
from underbridge.machine.context import Reg
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import Fault
from underbridge.machine.paging import PageTable

DEFAULT_QUANTUM = 200_000
MAX_CONSOLE_BYTES = 1 << 20

ConsoleSink = Callable[[Process, bytes], None]


class Kernel:
    def __init__(self, machine: Machine, *, quantum: int = DEFAULT_QUANTUM,
                 console: ConsoleSink | None = None) -> None:
        self.machine = machine
        self.quantum = quantum
        self.processes: dict[int, Process] = {}
        self._console = console
        self._next_pid = 1

    def spawn(self, elf: Path | bytes, argv: list[str] | None = None, *, name: str = "",
              ring: int = 3, table: PageTable | None = None, pkey: int = 0, pkru: int = 0,
              stack_top: int = USER_STACK_TOP) -> Process:
        """Create a process from an ELF file (path or bytes); it runs on `run`."""
        data = elf.read_bytes() if isinstance(elf, Path) else elf
        name = name or (elf.stem if isinstance(elf, Path) else "guest")
        image = parse_elf(data, name=name)
        process = create_process(self.machine, self._next_pid, name, image,
                                 argv if argv is not None else [name], ring=ring, table=table,
                                 pkey=pkey, pkru=pkru, stack_top=stack_top)
        self.processes[process.pid] = process
        self._next_pid += 1
        return process

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Run until no process is runnable, or `until()` holds after a time slice."""
        while runnable := [p for p in self.processes.values() if p.alive]:
            for process in runnable:
                if process.alive:
                    self._run_slice(process)
                if until():
                    return

    def _run_slice(self, process: Process) -> None:
        result = self.machine.run(process.context, budget=self.quantum)
        if result.kind is ExitKind.SYSCALL:
            self._syscall(process)
        elif result.kind is ExitKind.FAULT:
            assert result.fault is not None
            self.terminate(process, result.fault)
        elif result.kind is ExitKind.HALTED:
            raise KernelBug(f"{process.name}: CPU halted outside any kernel event")

    def _syscall(self, process: Process) -> None:
        context = process.context
        number = context[Reg.RAX]
        result = dispatch.dispatch(self, process, number, context.syscall_args())
        if process.alive:
            context[Reg.RAX] = result
            self.machine.charge("swapgs", 2)
            self.machine.charge("sysret")

    # -- process lifetime (called by handlers and the loop) ---------------------------

    def exit(self, process: Process, status: int) -> None:
        process.state = State.EXITED
        process.exit_status = status - (1 << 64) if status >= 1 << 63 else status
        destroy_process(self.machine, process)

    def terminate(self, process: Process, fault: Fault) -> None:
        process.state = State.FAULTED
        process.fault = fault
        destroy_process(self.machine, process)

    def kill(self, process: Process) -> None:
        """End a process from outside (it exits with status -9)."""
        if process.alive:
            self.exit(process, -9)

    def console_write(self, process: Process, data: bytes) -> None:
        room = MAX_CONSOLE_BYTES - len(process.console)
        process.console += data[:room]
        if self._console is not None:
            self._console(process, data[:room])
