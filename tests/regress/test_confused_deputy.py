"""Regression: an in-kernel server had the kernel read and write other domains for it.

umem checked syscall buffers for present/U=1/writable only; on the kernel page table
every page is U=1, so WRITE could leak another server's memory or a gate's code, and
WAIT could write into another server or forge a gate's call token (found by the red
team). Fixed by checking the page's protection key against the caller's PKRU.
"""

from underbridge.abi.syscalls import Errno, Prot, Rights, Sys
from underbridge.bench.ipc import ECHO_BASE
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.cap import Cap
from underbridge.kernel.dispatch import dispatch
from underbridge.kernel.kernel import Kernel
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.cpu import Machine

ECHO_STACK = ECHO_BASE + 0x00FF_EFF0  # echo's initial stack, under echo's key


def test_in_kernel_servers_cannot_use_the_kernel_as_a_deputy(hello_elf):
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    kernel.register_program("hello", hello_elf)
    attacker = kernel.spawn(build_program("hello", base=0x0300_0000), ["hello"], in_kernel=True)
    thread = attacker.threads[0]

    def sys(number, *args):
        return dispatch(kernel, thread, number, (*args, *[0] * (6 - len(args))))

    efault = -int(Errno.EFAULT)
    assert sys(Sys.WRITE, ECHO_STACK, 16) == efault  # read another server
    assert sys(Sys.WRITE, KERNEL_DATA, 16) == efault  # read the kernel
    child = kernel.spawn(hello_elf, ["hello"])
    kernel.run(until=lambda: not child.running)
    slot = attacker.caps.insert(Cap(child, Rights.READ))
    gate_control = 0x7000_0000  # where connections' call tokens live
    assert sys(Sys.WAIT, slot, ECHO_STACK) == efault  # write into another server
    assert sys(Sys.WAIT, slot, gate_control) == efault  # forge a gate's call token
    assert sys(Sys.WAIT, slot, KERNEL_DATA) == efault
    assert bytes(attacker.console) in (b"", b"Hello from ring 0 of the underbridge machine!\n")
    own = 0x0300_0000 + 0x0080_0000  # PMO_MAP: only inside its own window
    pmo = sys(Sys.PMO_CREATE, 4096)
    assert sys(Sys.PMO_MAP, pmo, 0x6000_0000, Prot.READ) == -int(Errno.EINVAL)  # gates
    assert sys(Sys.PMO_MAP, pmo, ECHO_BASE + 0x10_0000, Prot.READ) == -int(Errno.EINVAL)
    assert sys(Sys.PMO_MAP, pmo, own - 0x10_0000, Prot.READ | Prot.WRITE) == 0
