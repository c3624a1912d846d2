"""Calls in progress through gates: where a thread runs, who is to blame for a fault, and
how the kernel ends a call whose server is gone.

Gates never enter the kernel, so the kernel learns of thread migration only from the
records gates keep: a gate's call half writes the calling thread's id into the caller
slot of its save area, and its return half clears it (bridge/gate.py). A thread's calls
in progress form a path of such records, from the domain it belongs to (or from the
kernel, for a call the kernel makes for an application) to the domain it runs in now.

Trust:
  - A record lives in the client's domain: only the client can forge it. Paths are
    therefore followed outwards from the thread's own domain, so a forged record can
    only mislead the kernel about a thread that already runs the forger's code, and a
    position read from the records is believed only if the thread's PKRU agrees with it
    (or the fault is in gate code, where only a deliberate jump gets a thread).
  - Ending a call takes the caller's PKRU from its domain, never from memory, and reads
    the return address from the caller's stack with the caller's own rights (the rules
    of kernel/umem.py): a forged saved stack pointer hurts the caller alone.
Who may call: kernel/ipc/underbridge.py only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from underbridge.abi.syscalls import Errno
from underbridge.bridge.gate import CALLER_SLOT, SAVED_REGS
from underbridge.errors import SyscallError
from underbridge.kernel import umem
from underbridge.machine.context import CpuContext, Reg

if TYPE_CHECKING:
    from underbridge.machine.cpu import Machine

RESTORED = (Reg.RSP, Reg.RBX, Reg.RBP, Reg.R12, Reg.R13, Reg.R14, Reg.R15)
ZEROED = (Reg.RCX, Reg.RDX, Reg.RSI, Reg.RDI, Reg.R8, Reg.R9, Reg.R10, Reg.R11)
assert tuple(reg.name.lower() for reg in RESTORED) == SAVED_REGS


class Party(Protocol):
    """A domain as this module sees it (kernel/ipc/underbridge.py's DomainState)."""

    @property
    def pkru(self) -> int: ...


class Call(Protocol):
    """A gate as this module sees it (kernel/ipc/underbridge.py's GateState)."""

    slot: int
    save_area: int

    @property
    def caller_pkru(self) -> int: ...  # the PKRU a caller returns to

    @property
    def client(self) -> Party | None: ...  # None: the kernel, for an application

    @property
    def server(self) -> Party: ...


def caller_of(machine: Machine, call: Call) -> int:
    """The id of the thread whose call through this gate is in progress, or 0."""
    frame = machine.kernel_space.translate(call.save_area + CALLER_SLOT)
    return 0 if frame is None else machine.mem.read_u64(frame)


def path(machine: Machine, calls: Iterable[Call], tid: int, own: Party | None) -> list[Call]:
    """The calls in progress of thread `tid`, outermost first, followed from `own`.

    If a thread has re-entered a domain through a second connection, the records do not
    say in which order its two calls into that domain were made; the one through the
    lower gate slot is taken first. Both lead to the same current position.
    """
    pending = sorted(
        (call for call in calls if caller_of(machine, call) == tid), key=lambda call: call.slot
    )
    taken: list[Call] = []
    here = own
    while (step := next((c for c in pending if c.client is here), None)) is not None:
        pending.remove(step)
        taken.append(step)
        here = step.server
    return taken


def position(calls: list[Call], own: Party | None) -> Party | None:
    """The domain a thread with this path of calls legitimately runs in."""
    return calls[-1].server if calls else own


def culprit(
    calls: list[Call], own: Party | None, pkru: int, in_gate: bool, parties: Iterable[Party]
) -> Party | None:
    """Whose fault is a fault of a thread with this path, this PKRU, in gate code or not?

    The domain the thread legitimately runs in, if its PKRU agrees or it faulted inside a
    gate (a legitimate call never faults there: only code that jumped into a gate does,
    and that code is the position's). Otherwise the thread runs with some domain's PKRU
    outside any gate while its records place it elsewhere: only that domain's own
    choices (its code, its forged records) can have brought it there.
    """
    here = position(calls, own)
    if in_gate or (here is not None and here.pkru == pkru):
        return here
    return next((party for party in parties if party.pkru == pkru), here)


def unwind(machine: Machine, context: CpuContext, call: Call, tid: int) -> bool:
    """End `call` for the thread in `context`: it returns -EPIPE to the caller.

    The caller's registers come from the save area, its PKRU from its domain, and the
    return address from its stack (in the page table the thread runs on), read with its
    rights; the caller slot is cleared.
    False if the caller's saved stack is not the caller's to read (it forged its save
    area): the context is then left as it was.
    """
    frame = machine.kernel_space.translate(call.save_area)
    if frame is None or caller_of(machine, call) != tid:
        return False
    saved = [machine.mem.read_u64(frame + 8 * index) for index in range(len(RESTORED))]
    pkru = call.caller_pkru
    try:
        # The caller's stack is where the thread runs: the kernel page table, or an
        # application's own under pku-shared.
        raw = umem.copy_in(machine, machine.page_table(context.cr3), saved[0], 8, pkru=pkru)
    except SyscallError:
        return False
    machine.mem.write_u64(frame + CALLER_SLOT, 0)
    for reg, value in zip(RESTORED, saved, strict=True):
        context[reg] = value
    context[Reg.RSP] = saved[0] + 8
    for reg in ZEROED:
        context[reg] = 0
    context[Reg.RAX] = -Errno.EPIPE & 0xFFFF_FFFF_FFFF_FFFF
    context.rip = int.from_bytes(raw, "little")
    context.pkru = pkru
    return True


def clear(machine: Machine, calls: Iterable[Call]) -> None:
    """Forget calls that ended with a call further out (their frames are abandoned)."""
    for call in calls:
        frame = machine.kernel_space.translate(call.save_area + CALLER_SLOT)
        if frame is not None:
            machine.mem.write_u64(frame, 0)
