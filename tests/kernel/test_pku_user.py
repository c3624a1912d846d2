"""The pku-user design (kernel/ipc/pku_user.py): every server in one user process, in
ring 3, isolated from the others by protection keys; why the talk rejected it, measured.

Real guests on the emulated CPU: echo, pingpong and red-team attack programs.
"""

from __future__ import annotations

import pytest

from underbridge.bench import ipc as ipc_bench
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine
from underbridge.machine.oracle import Access, Violation

ATTACKER_BASE = 0x0300_0000


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str], ipc_bench.PathResult]:
    return {
        (mode, row.path): row
        for mode in ("sel4", "underbridge", "pku-user")
        for row in ipc_bench.run(mode, rounds=100).results
    }


def test_the_rejection_measured_an_application_call_pays_a_second_kernel_crossing(rows):
    """Design choice 1 makes server-server calls as cheap as UnderBridge's gate, but an
    application still reaches a server by kernel IPC into another process: seL4's round
    trip. Against underbridge (the kernel calls the gate itself, one kernel entry) it
    pays the server's ReplyRecv: a second syscall and sysret and seL4's ReplyRecv
    fastpath, for the gate's two wrpkru and underbridge's swapgs pair."""
    for path in ipc_bench.PATHS:
        assert (
            rows["pku-user", path].events_per_rtt
            == rows["sel4" if path == "app-server" else "underbridge", path].events_per_rtt
        )
    assert rows["pku-user", "server-server"].sim_cycles_per_rtt == (
        rows["underbridge", "server-server"].sim_cycles_per_rtt
    )
    user, bridge = rows["pku-user", "app-server"], rows["underbridge", "app-server"]
    delta = {
        event: user.events_per_rtt.get(event, 0) - bridge.events_per_rtt.get(event, 0)
        for event in {*user.events_per_rtt, *bridge.events_per_rtt}
    }
    assert {event: n for event, n in delta.items() if n} == {
        "syscall": 1,
        "sysret": 1,
        "sel4_fastpath_replyrecv": 1,
        "swapgs": -2,
        "wrpkru": -2,
    }
    assert user.sim_cycles_per_rtt == rows["sel4", "app-server"].sim_cycles_per_rtt
    assert user.sim_cycles_per_rtt - bridge.sim_cycles_per_rtt > 200  # 1,203 against 953


def _kernel_with_echo() -> tuple[Kernel, CapGroup]:
    kernel = Kernel(Machine(), ipc="pku-user")
    echo = kernel.spawn(build_program("echo", base=ipc_bench.ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    return kernel, echo


def test_servers_run_in_ring_3_in_the_one_shared_process():
    kernel, echo = _kernel_with_echo()
    (thread,) = echo.threads
    assert thread.context.cpl == 3
    assert echo.vmspace.table is kernel.machine.kernel_space  # the shared page table
    domain = kernel.placement.domain_of(echo)
    assert domain is not None and thread.context.pkru == domain.pkru


def test_a_server_reading_another_servers_memory_takes_a_pku_fault():
    kernel, echo = _kernel_with_echo()
    address = echo.threads[0].context[Reg.RSP]
    elf = build_program(guest_root() / "attacks" / "read_server.c", base=ATTACKER_BASE)
    attacker = kernel.spawn(elf, ["read_server", f"{address:x}"], in_kernel=True)
    kernel.run(until=lambda: not attacker.running)
    fault = attacker.fault
    assert attacker.state is GroupState.FAULTED and fault is not None
    assert fault.reason is Violation.PKEY_ACCESS_DISABLED and fault.cpl == 3
    assert fault.access is Access.READ and fault.address == address
    assert "LEAKED" not in bytes(attacker.console).decode()
    assert echo.running


@pytest.mark.parametrize("kind", ["wrpkru", "xrstor"])
def test_a_servers_stray_pkru_writer_is_refused_at_placement(kind):
    kernel = Kernel(Machine(), ipc="pku-user")
    elf = build_program(guest_root() / "attacks" / "pkru_writer.c", base=ATTACKER_BASE)
    free = kernel.ipc.keys.available
    with pytest.raises(UserError, match="its code can change PKRU"):
        kernel.spawn(elf, ["pkru_writer", kind, "plain"], in_kernel=True)
    assert kernel.ipc.keys.available == free  # the refused server's key is back
