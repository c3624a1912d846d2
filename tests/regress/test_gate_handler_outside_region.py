"""Regression: a wild handler address crashed the kernel when a client connected.

IPC_REGISTER records the handler a server passes; under underbridge, IPC_CONNECT to an
in-kernel server generates a gate that calls that handler with an absolute 32-bit
address, and gate generation raised ValueError ("a gate's handler must lie below
2 GiB") out of Kernel.run for a handler above 2 GiB (found by `underbridge fuzz`).
Fixed in UnderbridgeIpc.connect: the handler must lie in the server's image (the lower
half of its region), else the connect fails with -EINVAL and nothing is allocated.
"""

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

SERVER_BASE = 0x0300_0000
SOURCE = r"""
#include "ub.h"
int main(int argc, char **argv)
{
    unsigned long handler = argv[1][0] == 'w' ? 0x100000000UL : 0x05000000UL;
    long service = ub_syscall3(UB_SYS_IPC_REGISTER, (long)"wild", 4, (long)handler);
    long conn = ub_syscall2(UB_SYS_IPC_CONNECT, (long)"wild", 4);
    ub_printf("register %s connect %ld\n", service >= 0 ? "ok" : "failed", conn);
    return 0;
}
"""


def test_a_handler_outside_the_servers_region_fails_the_connect(tmp_path):
    source = tmp_path / "wild_handler.c"
    source.write_text(SOURCE)
    elf = build_program(source, base=SERVER_BASE)
    for handler in ("wild", "foreign"):  # above 2 GiB; another region below 2 GiB
        kernel = Kernel(Machine(accounting=False), ipc="underbridge")
        server = kernel.spawn(elf, ["wild_handler", handler], in_kernel=True)
        kernel.run()
        assert server.state is GroupState.EXITED and server.exit_status == 0
        assert bytes(server.console) == b"register ok connect -22\n"
        assert kernel.ipc.keys.owners == {}  # no shared key kept, the server's given back
