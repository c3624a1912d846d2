"""The kernel's gate calls for applications: an application's IPC_CALL to an in-kernel
server runs the server's handler through the connection's gate, from key-0 kernel state.
(The monolithic design calls its stubs the same way: an `Entry` is a gate or a stub.)

The kernel switches to the kernel page table and calls the gate on a stack of its own
(kernel_space.KERNEL_CALL_STACK), with the PKRU that opens key 0 and the connection's
shared key, and runs until the gate returns to KERNEL_RETURN.

Invariants:
  - One gate call at a time (`current`), run to completion before any other thread
    runs, in one CPU context reused for every call and reset each time to what
    `Machine.new_context` would make: nothing of one call reaches the next.
  - A syscall from inside the call gets -EDEADLK (the handler runs for another thread).
  - A fault ends the domain to blame (the design's `culprit`), which ends its calls in
    progress: the kernel's own call returns -EPIPE, or a server further out carries on.
    A handler that runs MAX_SLICES slices without returning is killed, and so is
    every domain still on the call's path, innermost first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from underbridge.abi.message import GATE_MESSAGE
from underbridge.abi.syscalls import Errno
from underbridge.errors import KernelBug
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.cpu import ExitKind
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Message
    from underbridge.machine.faults import Fault

MAX_SLICES = 1000  # a handler the kernel called that runs longer is killed
_EPIPE = -Errno.EPIPE & 0xFFFF_FFFF_FFFF_FFFF
_EDEADLK = -Errno.EDEADLK & 0xFFFF_FFFF_FFFF_FFFF

#: Who is to blame when a call of thread `tid`, in `context`, faults or is stuck: the
#: design's answer (gate_calls.culprit on its records), None when no call is in progress.
Culprit = Callable[["Kernel", int, CpuContext], "CapGroup | None"]


class Entry(Protocol):
    """What the kernel calls: machine code at `address`, entered with `caller_pkru`."""

    address: int

    @property
    def caller_pkru(self) -> int: ...


@dataclass(eq=False)
class Upcall:
    """A call the kernel makes through a gate for an application thread."""

    tid: int  # the application thread's id: the gate records calls under it
    context: CpuContext


class KernelCalls:
    """The kernel's gate calls, one at a time."""

    def __init__(
        self, pages: ks.KernelPages, culprit: Culprit, domain_count: Callable[[], int]
    ) -> None:
        self._pages = pages
        self._culprit = culprit
        self._domain_count = domain_count
        self.current: Upcall | None = None
        self._context: CpuContext | None = None  # reused by every call

    def call(self, kernel: Kernel, tid: int, state: Entry, msg: Message) -> tuple[int, Message]:
        """Call a gate for application thread `tid`; run the server's handler (and
        whatever it calls) to completion. The status (RAX, signed) and the reply."""
        if self.current is not None:
            raise KernelBug("a kernel gate call inside another")
        context = self._fresh_context(kernel, state)
        kernel.machine.mem.write_u64(self._pages.return_slot, ks.KERNEL_RETURN)
        context.set_registers(GATE_MESSAGE, msg)
        self.current = Upcall(tid, context)
        try:
            for _ in range(MAX_SLICES):
                if context.rip == ks.KERNEL_RETURN:
                    break
                self._pages.set_current_thread(kernel, tid)
                self._slice(kernel, context)
            for _ in range(self._domain_count() + 1):  # a handler that never returns:
                if context.rip == ks.KERNEL_RETURN:  # end domains from the inside out
                    break
                self._end_innermost(kernel, context, None)
            else:
                context.rip, context[Reg.RAX] = ks.KERNEL_RETURN, _EPIPE
        finally:
            self.current = None
        reply = context.registers(GATE_MESSAGE)
        return signed(context[Reg.RAX]), (reply[0], reply[1], reply[2], reply[3])

    def _fresh_context(self, kernel: Kernel, state: Entry) -> CpuContext:
        machine = kernel.machine
        rsp = ks.KERNEL_CALL_STACK + PAGE_SIZE - 8
        if self._context is None:
            self._context = machine.new_context(
                ring=0,
                page_table=machine.kernel_space,
                rip=state.address,
                rsp=rsp,
                pkru=state.caller_pkru,
            )
            return self._context
        return machine.reset_context(
            self._context,
            ring=0,
            page_table=machine.kernel_space,
            rip=state.address,
            rsp=rsp,
            pkru=state.caller_pkru,
        )

    def _slice(self, kernel: Kernel, context: CpuContext) -> None:
        supervisor = kernel.supervisor  # its kills land inside this call too
        budget = kernel.sched.quantum
        if supervisor is not None:
            budget = supervisor.budget(budget, context.rip)
        result = kernel.machine.run(context, budget=budget, stop_at=ks.KERNEL_RETURN)
        if result.kind is ExitKind.SYSCALL:
            context[Reg.RAX] = _EDEADLK
        elif result.kind in (ExitKind.FAULT, ExitKind.HALTED):
            fault = result.fault or kernel.machine.halt_fault(context)
            self._end_innermost(kernel, context, fault)
        if supervisor is not None and context.rip != ks.KERNEL_RETURN:
            supervisor.in_kernel_call(context.rip)

    def _end_innermost(self, kernel: Kernel, context: CpuContext, fault: Fault | None) -> None:
        """End the domain to blame for the kernel's gate call being stuck or faulting."""
        assert self.current is not None
        group = self._culprit(kernel, self.current.tid, context)
        if group is None:
            # No call in progress: the gate itself refused (e.g. -EBUSY) or the stack
            # was left in a state the kernel cannot resume. End the call here.
            context.rip = ks.KERNEL_RETURN
            context[Reg.RAX] = _EPIPE
            return
        if fault is None:
            kernel.kill(group)
        else:
            kernel.terminate(group, fault)


def signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value
