"""The native (C) block hook against the Python reference: the same counts, the same
attribution, the same preemption points and the same monitor traps, on real guests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine import native_accounting
from underbridge.machine.accounting import Accounting, Tally
from underbridge.machine.cpu import Exit, ExitKind, Machine
from underbridge.machine.faults import PAGE_FAULT, VM_EXIT
from underbridge.machine.native_accounting import NativeAccounting
from underbridge.machine.physmem import PAGE_SIZE

from .conftest import DATA_VA, STACK_TOP, USER_CODE, USER_RW, Scratch

IMPLEMENTATIONS = ("python", "native")


def _machine(impl: str, monkeypatch: pytest.MonkeyPatch, **kwargs: bool) -> Machine:
    monkeypatch.setenv("UNDERBRIDGE_ACCOUNTING", impl)
    machine = Machine(**kwargs)
    expected = NativeAccounting if impl == "native" else Accounting
    assert type(machine._decoder) is expected
    return machine


def _both(
    monkeypatch: pytest.MonkeyPatch, scenario: Callable[[Machine], object], **kwargs: bool
) -> list[tuple[object, Tally]]:
    """Run `scenario` on a fresh machine per implementation: (its result, the tally)."""
    outcomes = []
    for impl in IMPLEMENTATIONS:
        machine = _machine(impl, monkeypatch, **kwargs)
        outcomes.append((scenario(machine), machine.tally()))
    return outcomes


def test_the_native_hook_is_the_default():
    assert native_accounting.available()
    assert type(Machine().accounting) is NativeAccounting


def test_hello(monkeypatch, hello_elf):
    def scenario(machine: Machine) -> tuple[object, ...]:
        kernel = Kernel(machine)
        process = kernel.spawn(hello_elf)
        kernel.run()
        return process.state, process.exit_status, bytes(process.console)

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert (
        python
        == native
        == (GroupState.EXITED, 0, b"Hello from ring 3 of the underbridge machine!\n")
    )
    assert native_tally == python_tally
    assert native_tally.instructions > 100 and native_tally.events["syscall"] == 2
    assert set(native_tally.by_category) == set(python_tally.by_category)


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
@pytest.mark.parametrize("path", ["app-server", "server-server"])
def test_pingpong(monkeypatch, mode, path):
    def scenario(machine: Machine) -> tuple[object, ...]:
        kernel = Kernel(machine, ipc=mode)
        in_kernel = kernel.ipc.traits.servers_in_kernel
        echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=in_kernel)
        kernel.run(
            until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
        )
        args = ["pingpong", "20", "echo"] + (["--as-server"] if path == "server-server" else [])
        client = kernel.spawn(
            build_program("pingpong", base=PINGPONG_BASE),
            args,
            in_kernel=in_kernel and path == "server-server",
        )
        kernel.run(until=lambda: not client.running)
        return client.state, client.exit_status

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert python == native == (GroupState.EXITED, 0)
    assert native_tally == python_tally
    assert native_tally.events["syscall"] > 0
    if mode == "underbridge" and path == "server-server":
        assert native_tally.events["wrpkru"] >= 40  # two per round through the gate


def test_rep_movs_iterations_are_counted_like_the_reference(monkeypatch):
    """QEMU runs each `rep movsb` iteration as its own block: 100 entries of one block."""

    def scenario(machine: Machine) -> object:
        scratch = Scratch(machine, machine.new_page_table())
        scratch.page(DATA_VA, USER_RW, bytes(range(200)))
        scratch.code(
            f"mov rsi, {DATA_VA}\nlea rdi, [rsi + 100]\nmov rcx, 100\n"
            "rep movsb\nmov rdx, 3\nl: mov rcx, 10\nrep movsb\ndec rdx\njnz l\nsyscall"
        )
        return machine.run(scratch.context()).kind

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert python == native == ExitKind.SYSCALL
    assert native_tally == python_tally
    assert native_tally.instructions > 130  # at least one per iteration


def test_fault_in_the_middle_of_a_block(monkeypatch):
    def scenario(machine: Machine) -> object:
        scratch = Scratch(machine, machine.new_page_table())
        scratch.code(
            "mov rcx, 5\nl: add rax, 1\ndec rcx\njnz l\n"
            "add rax, 1\nmov rbx, [0x900000]\nadd rax, 2\nsyscall"
        )
        exit_ = machine.run(scratch.context())
        return exit_.kind, exit_.fault.vector, exit_.fault.address

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert python == native == (ExitKind.FAULT, PAGE_FAULT, 0x900000)
    assert native_tally == python_tally
    assert native_tally.instructions == 1 + 3 * 5 + 4  # the faulting block counted whole


@pytest.mark.parametrize("budget", [1, 7, 100, 2999])
def test_preemption_stops_at_the_same_block(monkeypatch, budget):
    def scenario(machine: Machine) -> object:
        scratch = Scratch(machine, machine.new_page_table())
        scratch.code("mov rcx, 1000\nl: add rax, 1\ndec rcx\njnz l\nsyscall")
        context = scratch.context()
        exits = []
        while (exit_ := machine.run(context, budget=budget)).kind is ExitKind.PREEMPTED:
            exits.append((context.rip, machine.tally().instructions))
        return exit_.kind, exits

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert python == native
    assert native[0] is ExitKind.SYSCALL and len(native[1]) >= max(1, 3002 // (budget + 3))
    assert native_tally == python_tally


@pytest.mark.parametrize("accounting", [True, False])
def test_the_monitor_traps_every_privileged_block(monkeypatch, accounting):
    """In ring 0 the block holding `hlt` stops before it runs; the VM exit is reported at
    the instruction, after the block's earlier instructions ran, on every run."""

    def scenario(machine: Machine) -> object:
        scratch = Scratch(machine, machine.new_page_table())
        scratch.code(
            "mov rcx, 3\nl: dec rcx\njnz l\nadd rax, 1\nmov cr0, rax\nsyscall", flags=USER_CODE
        )
        results = []
        for _ in range(2):  # a second run meets the block in the table
            context = scratch.context(ring=0)
            exit_ = machine.run(context)
            results.append((exit_.kind, exit_.fault.vector, exit_.fault.instruction, context[0]))
        assert machine.monitor is not None
        return results, machine.monitor.exits, machine.clock()

    (python, python_tally), (native, native_tally) = _both(
        monkeypatch, scenario, accounting=accounting, monitor=True
    )
    assert python == native
    results, exits, clock = native
    assert exits == 2 and clock > 0  # the clock runs with counting off too
    assert all(r[:3] == (ExitKind.FAULT, VM_EXIT, "mov cr0, rax") and r[3] == 1 for r in results)
    assert native_tally == python_tally


def test_categories_and_reattribution_match(monkeypatch):
    def scenario(machine: Machine) -> object:
        scratch = Scratch(machine, machine.new_page_table())
        scratch.page(STACK_TOP - PAGE_SIZE, USER_RW)
        start = scratch.code(
            "mov rcx, 10\nl: dec rcx\njnz l\ncall f\nsyscall\n"
            "f: add rbx, 1\nxor eax, eax\nwrpkru\nret"
        )
        machine.attribute("loop", start, start + 7)
        exit_ = machine.run(scratch.context())
        machine.charge_to("ipc")
        machine.charge("cr3_write", 2)
        machine.reattribute(start, "ipc", 2)
        return exit_

    (python, python_tally), (native, native_tally) = _both(monkeypatch, scenario)
    assert python == native == Exit(ExitKind.SYSCALL)
    assert native_tally == python_tally
    assert set(native_tally.by_category) == {"loop", "other", "ipc"}
    assert native_tally.events == python_tally.events and native_tally.events["wrpkru"] == 1


def test_an_error_in_the_python_callback_is_raised_after_the_run(monkeypatch):
    machine = _machine("native", monkeypatch)
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("nop\nsyscall")

    def broken(_address: int, _size: int) -> bytes:
        raise OSError("cannot read code")

    machine._decoder._read_code = broken
    with pytest.raises(OSError, match="cannot read code"):
        machine.run(scratch.context())
