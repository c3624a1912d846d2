"""Drivers in kernel space: trapped port I/O, the checked routines, PORT_IO, the benchmark."""

from __future__ import annotations

import pytest

from underbridge.abi.syscalls import Errno, Sys
from underbridge.bench import deprivilege
from underbridge.bridge.iocall import generate
from underbridge.bridge.scan import scan_code
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.dispatch import dispatch
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.costs import cycles
from underbridge.machine.cpu import Machine
from underbridge.machine.faults import VM_EXIT

PORT = 0x80


def spawn_driver(kernel, rounds, *, granted=True, routines=None):
    argv = ["iodriver", str(rounds), hex(PORT)]
    if routines is not None:
        argv += [hex(routines.outb), hex(routines.inb)]
    return kernel.spawn(
        build_program("iodriver", base=0x0300_0000),
        argv,
        in_kernel=True,
        io_ports=range(PORT, PORT + 1) if granted else range(0),
        rewrite=False,
    )  # as built: its own in/out are trapped


@pytest.mark.parametrize("through_routines", [False, True], ids=["trapped", "routines"])
def test_a_driver_holding_its_port_works_either_way(through_routines):
    machine = Machine()
    kernel = Kernel(machine, ipc="underbridge")
    routines = kernel.ipc.io_routines(kernel) if through_routines else None
    driver = spawn_driver(kernel, 5, routines=routines)
    kernel.run()
    assert driver.state is GroupState.EXITED and driver.exit_status == 0
    assert bytes(driver.console) == b"iodriver: 5 writes, read 0xff\n"
    assert driver.port_writes == [(PORT, i) for i in range(5)]
    assert machine.monitor.exits == (0 if through_routines else 6)  # 5 out + 1 in


@pytest.mark.parametrize("through_routines", [False, True], ids=["trapped", "routines"])
def test_a_driver_without_the_port_is_stopped(through_routines):
    kernel = Kernel(Machine(), ipc="underbridge")
    routines = kernel.ipc.io_routines(kernel) if through_routines else None
    driver = spawn_driver(kernel, 5, granted=False, routines=routines)
    kernel.run()
    assert driver.state is GroupState.FAULTED and driver.port_writes == []
    if through_routines:  # the routine's ud2 after PORT_IO refused
        assert driver.fault.mnemonic == "#UD"
    else:
        assert driver.fault.vector == VM_EXIT and driver.fault.instruction == "out dx, al"


def test_port_io_syscall_checks_the_grant(hello_elf):
    kernel = Kernel(Machine(accounting=False))
    group = kernel.spawn(hello_elf, ["hello"], io_ports=range(0x60, 0x65))
    thread = group.threads[0]
    assert dispatch(kernel, thread, Sys.PORT_IO, (0x60, 0, 0, 0, 0, 0)) == 0xFF
    assert dispatch(kernel, thread, Sys.PORT_IO, (0x64, 0xAB, 1, 0, 0, 0)) == 0
    assert group.port_writes == [(0x64, 0xAB)]
    assert dispatch(kernel, thread, Sys.PORT_IO, (0x65, 0, 0, 0, 0, 0)) == -Errno.EPERM


def test_the_routines_hold_nothing_privileged_and_nothing_that_writes_pkru():
    code, routines = generate(0x7F00_0000)
    assert scan_code(code, vaddr=0x7F00_0000) == []
    assert routines.outb == 0x7F00_0000 and routines.inb == 0x7F00_0080


def test_benchmark_reports_the_vm_exit_and_the_cheaper_rewritten_path():
    result = deprivilege.run(50)
    trapped, rewritten = result.results
    assert trapped.events_per_op == {"vm_exit": 1.0}
    assert cycles("vm_exit") <= trapped.sim_cycles_per_op < cycles("vm_exit") + 50
    assert "vm_exit" not in rewritten.events_per_op
    assert rewritten.sim_cycles_per_op * 5 < trapped.sim_cycles_per_op
