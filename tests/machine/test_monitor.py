"""The secure monitor: privileged instructions in ring 0 become VM exits, wherever they hide."""

from __future__ import annotations

import pytest

from underbridge.guestbuild.asm import assemble
from underbridge.machine.context import Reg
from underbridge.machine.costs import cycles
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import GENERAL_PROTECTION, VM_EXIT

from .conftest import CODE_VA, Scratch

PRIVILEGED = [
    "mov cr4, rax",
    "mov cr0, rax",
    "mov cr3, rax",
    "wrmsr",
    "rdmsr",
    "lgdt [rax]",
    "lidt [rax]",
    "hlt",
    "cli",
    "sti",
    "invlpg [rax]",
    "in al, dx",
    "out dx, al",
    "swapgs",
    "wbinvd",
    "clts",
    "mov rax, cr0",
    "mov dr7, rax",
]


@pytest.fixture(scope="module", params=[True, False], ids=["accounting", "no-accounting"])
def machine(request):
    return Machine(accounting=request.param)


@pytest.mark.parametrize("instruction", PRIVILEGED)
def test_privileged_instruction_in_ring0_is_a_vm_exit_after_the_code_before_it(
    machine, instruction
):
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code(f"mov rbx, 5\nadd rbx, 1\n{instruction}\nmov rbx, 99\nsyscall")
    context = scratch.context(ring=0)
    exits_before = machine.monitor.exits
    result = machine.run(context)
    assert result.kind is ExitKind.FAULT and result.fault.vector == VM_EXIT
    assert result.fault.instruction.split()[0] == instruction.split()[0]
    assert context[Reg.RBX] == 6  # what came before ran; the instruction did not
    assert result.fault.rip == context.rip == CODE_VA + 11
    assert machine.monitor.exits == exits_before + 1


def test_a_privileged_instruction_hidden_in_an_immediate_and_jumped_to_is_trapped(machine):
    """mov cr4, rax (0F 22 E0) hidden inside a mov's immediate, reached by a computed jump."""
    hidden = int.from_bytes(bytes.fromhex("0f22e090"), "little")
    code = assemble(
        f"lea rbx, [rip + target + 1]\njmp rbx\ntarget: mov eax, {hidden:#x}\nsyscall",
        origin=CODE_VA,
    )
    assert bytes.fromhex("0f22e0") in code
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code(f".byte {', '.join(hex(b) for b in code)}")
    result = machine.run(scratch.context(ring=0))
    assert result.fault.vector == VM_EXIT and result.fault.instruction == "mov cr4, rax"
    assert result.fault.rip == CODE_VA + code.index(bytes.fromhex("0f22e0"))


def test_a_vm_exit_is_charged_its_cost():
    machine = Machine()
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("wrmsr")
    before = machine.tally()
    machine.run(scratch.context(ring=0))
    delta = machine.tally() - before
    assert delta.events["vm_exit"] == 1 and delta.cycles >= cycles("vm_exit")


def test_ring3_privileged_instructions_stay_general_protection_faults(machine):
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("mov cr4, rax")
    assert machine.run(scratch.context(ring=3)).fault.vector == GENERAL_PROTECTION


def test_ordinary_ring0_code_runs_untouched(machine):
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("mov rcx, 100\nl: add rax, 2\ndec rcx\njnz l\nsyscall")
    context = scratch.context(ring=0)
    assert machine.run(context).kind is ExitKind.SYSCALL and context[Reg.RAX] == 200
