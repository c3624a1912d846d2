"""The monolithic design (kernel/ipc/monolithic.py): the lower bound, and no isolation.

Real guests on the emulated CPU: echo, pingpong and red-team attack programs.
"""

from __future__ import annotations

import pytest

from underbridge.bench import ipc as ipc_bench
from underbridge.guestbuild.asm import assemble
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.ipc import stub
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.context import Reg
from underbridge.machine.costs import cycles
from underbridge.machine.cpu import Machine

ATTACKER_BASE = 0x0300_0000
APP_BASE = 0x40_0000


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str], float]:
    return {
        (mode, row.path): row.sim_cycles_per_rtt
        for mode in ("monolithic", "underbridge")
        for row in ipc_bench.run(mode, rounds=100).results
    }


@pytest.mark.parametrize(
    ("handler", "badge", "buffer"),
    [(0x0100_1234, 1, 0x5000_0001_0000), (0x5FFF_F000, 0x7FFF_FFFF, 0)],
)
def test_the_stub_is_what_the_assembler_makes(handler, badge, buffer):
    address = 0x6000_3000
    code = stub.generate(address=address, handler=handler, badge=badge, buffer=buffer)
    source = stub.stub_source(handler=handler, badge=badge, buffer=buffer)
    assert code == assemble(source, origin=address)
    assert len(source.splitlines()) == stub.INSTRUCTIONS


def test_the_stub_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match="imm32"):
        stub.generate(address=0x6000_1000, handler=0x0100_0000, badge=1 << 31, buffer=0)
    with pytest.raises(ValueError, match="reach"):
        stub.generate(address=0x6000_1000, handler=1 << 40, badge=1, buffer=0)


def test_monolithic_is_below_underbridge_on_both_paths(rows):
    for path in ipc_bench.PATHS:
        assert rows["monolithic", path] < rows["underbridge", path]
    # The lower bound is not below a bare function call: the stub and the echo handler
    # run on top of it (costs.py function_call, compared, never charged).
    assert rows["monolithic", "server-server"] > cycles("function_call")


def test_underbridge_costs_its_cr3_writes_on_top_of_the_same_difference(rows):
    """Between the two designs, the gate (checks, 2 wrpkru) against the stub is the
    difference on both paths; the app-server path adds underbridge's 2 CR3 writes."""
    gate_vs_stub = rows["underbridge", "server-server"] - rows["monolithic", "server-server"]
    app = rows["underbridge", "app-server"] - rows["monolithic", "app-server"]
    assert app - gate_vs_stub == pytest.approx(2 * cycles("cr3_write"))
    assert gate_vs_stub > 2 * cycles("wrpkru")


def _kernel_with_echo() -> tuple[Kernel, CapGroup]:
    kernel = Kernel(Machine(), ipc="monolithic")
    echo_elf = build_program("echo", base=ipc_bench.ECHO_BASE)
    echo = kernel.spawn(echo_elf, ["echo"], in_kernel=True)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    return kernel, echo


def _attack(kernel: Kernel, program: str, args: list[str], *, in_kernel: bool) -> CapGroup:
    elf = build_program(
        guest_root() / "attacks" / f"{program}.c",
        base=ATTACKER_BASE if in_kernel else APP_BASE,
    )
    group = kernel.spawn(elf, [program, *args], in_kernel=in_kernel)
    kernel.run(until=lambda: not group.running)
    return group


@pytest.mark.parametrize("target", ["echo's stack", "the kernel's GDT"])
def test_no_isolation_a_server_reads_another_servers_memory_and_the_kernels(target):
    """The design's point: what a PKU fault stops under underbridge (red-team rows
    read-server and read-kernel) goes through here, and reads the right bytes."""
    kernel, echo = _kernel_with_echo()
    if target == "echo's stack":
        program, address = "read_server", echo.threads[0].context[Reg.RSP]
    else:
        program, address = "read_kernel", KERNEL_DATA + 8  # past the null descriptor
    attacker = _attack(kernel, program, [f"{address:x}"], in_kernel=True)
    value = int.from_bytes(
        kernel.machine.read_virtual(kernel.machine.kernel_space, address, 8), "little"
    )
    assert attacker.state is GroupState.EXITED and attacker.exit_status == 1
    assert value != 0 or target == "echo's stack"  # a GDT descriptor is never 0
    assert f"LEAKED: {target} at {address:#x} holds {value:x}" in bytes(attacker.console).decode()
    assert echo.running


def test_a_handler_fault_ends_its_server_and_an_application_call_returns_epipe():
    kernel, _ = _kernel_with_echo()
    server = _attack(kernel, "faulty_server", ["10"], in_kernel=True)  # reads address 0x10
    assert server.running
    app = kernel.spawn(build_program("pingpong", base=APP_BASE), ["pingpong", "1", "attacker"])
    kernel.run(until=lambda: not app.running)
    assert server.state is GroupState.FAULTED
    assert app.exit_status == 1 and b"call failed: -32" in bytes(app.console)


def test_no_fault_containment_an_in_kernel_caller_ends_with_its_faulting_server():
    kernel, _ = _kernel_with_echo()
    server = _attack(kernel, "faulty_server", ["10"], in_kernel=True)
    caller = kernel.spawn(
        build_program("pingpong", base=ipc_bench.PINGPONG_BASE),
        ["pingpong", "1", "attacker", "--as-server"],
        in_kernel=True,
    )
    kernel.run(until=lambda: not caller.running)
    assert server.state is GroupState.FAULTED
    assert caller.state is GroupState.FAULTED  # it resumed in the dead server's code
