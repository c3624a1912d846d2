"""Regression: IPC_CONNECT to an in-kernel server let OutOfMemory escape the kernel.

Under underbridge a connection to an in-kernel server takes frames for its gate, its
control page, a save area and a call stack; with physical memory nearly exhausted
(the fuzz guest's large PMO_CREATEs) the allocation raised OutOfMemory out of
Kernel.run, and the pages mapped before it stayed mapped (found by `underbridge fuzz`).
Fixed in UnderbridgeIpc._build: all or nothing, the connect returns -ENOMEM, and the
connection's key and pages are given back.
"""

from underbridge.bench.ipc import ECHO_BASE
from underbridge.errors import OutOfMemory
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import GATE_WINDOW
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine
from underbridge.machine.physmem import PAGE_SIZE

SOURCE = r"""
#include "ub.h"
#include "ub_ipc.h"
int main(void)
{
    struct ub_conn conn;
    long r = ub_ipc_connect("echo", &conn);
    ub_printf("connect %s\n", r == 0 ? "ok" : r == -UB_ENOMEM ? "ENOMEM" : "other");
    return 0;
}
"""


def connect_with_free_frames(client_elf, free: int) -> tuple[str, Kernel]:
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    client = kernel.spawn(client_elf, ["client"])
    frames = kernel.machine.frames
    try:
        while frames.free_frames > free:
            frames.alloc()  # what other programs' memory objects would hold
    except OutOfMemory:
        pass
    kernel.run(until=lambda: not client.running)
    assert echo.running
    return bytes(client.console).decode(), kernel


def test_a_connect_without_memory_for_its_gate_is_enomem(tmp_path):
    source = tmp_path / "connect_client.c"
    source.write_text(SOURCE)
    client_elf = build_program(source, base=0x40_0000)
    outcomes = {}
    for free in range(0, 24, 2):
        output, kernel = connect_with_free_frames(client_elf, free)
        outcomes[free] = output
        if output == "connect ENOMEM\n":
            assert len(kernel.ipc.keys.owners) == 1  # echo's own key only
            assert kernel.machine.kernel_space.lookup(GATE_WINDOW + PAGE_SIZE) is None
    assert set(outcomes.values()) == {"connect ENOMEM\n", "connect ok\n"}
