"""Port I/O for drivers: the checked path, and the emulation of a trapped instruction.

A cap group may be granted a range of I/O ports when it is spawned (`io_ports`). It
reaches them either through the kernel's checked routines (bridge/iocall.py), which
enter here by the PORT_IO syscall, or by executing `in`/`out` itself: in ring 0 the
secure monitor traps that as a VM exit and the kernel emulates it if the port is
granted (costly, hence the rewriter turns such instructions into routine calls).

The machine has no devices: a read returns all ones (a floating bus); a write is
recorded in the group's `port_writes` for tests and reports, and otherwise dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.errors import SyscallError
from underbridge.kernel.objects.thread import Thread
from underbridge.machine.context import Reg
from underbridge.machine.faults import VM_EXIT, Fault

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

FLOATING_BUS = 0xFF


def port_access(group: CapGroup, port: int, value: int, write: bool) -> int:
    """Do one byte of port I/O for a cap group, if it holds the port."""
    if port not in group.io_ports:
        raise SyscallError(Errno.EPERM, f"{group.name} holds no right to port {port:#x}")
    if write:
        group.port_writes.append((port, value & 0xFF))
        return 0
    return FLOATING_BUS


def sys_port_io(kernel: Kernel, thread: Thread, port: int, value: int, write: int, *_: int) -> int:
    return port_access(thread.group, port, value, bool(write))


def emulate_trapped_io(kernel: Kernel, thread: Thread, fault: Fault) -> bool:
    """The monitor's allow policy: a VM exit on `in al, dx` / `out dx, al` by a cap group
    that holds the port is emulated, and the thread goes on after the instruction.
    Anything else (another instruction, a port it does not hold) is left to the caller,
    which terminates the guest.

    The rights are those of the cap group whose code executed the instruction: a thread
    running another server's handler in a call (thread migration) has that server's,
    never its own (kernel.placement.code_owner)."""
    if fault.vector != VM_EXIT or fault.instruction not in EMULATED:
        return False
    context = thread.context
    port = context[Reg.RDX] & 0xFFFF
    group = kernel.placement.code_owner(kernel, thread)
    if port not in group.io_ports:
        return False
    if fault.instruction == "out dx, al":
        port_access(group, port, context[Reg.RAX], write=True)
    else:
        value = port_access(group, port, 0, write=False)
        context[Reg.RAX] = (context[Reg.RAX] & ~0xFF) | value
    context.rip = fault.rip + 1  # both forms are one byte: EC, EE
    return True


EMULATED = frozenset({"in al, dx", "out dx, al"})
