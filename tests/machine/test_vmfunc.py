"""VMFUNC leaf 0 emulated by the machine (machine/vmfunc.py): the listed switch only."""

from __future__ import annotations

from underbridge.machine.context import Reg
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import INVALID_OPCODE

from .conftest import Scratch

# Both spaces hold this code at the same address; only R12's value differs, so R12 says
# which page table the instructions after the vmfunc were fetched through.
CODE = "mov eax, {leaf}\nmov ecx, {index}\nvmfunc\nmov r12, {mark}\nsyscall"


def two_spaces(machine: Machine, leaf: int = 0, index: int = 1) -> tuple[Scratch, Scratch]:
    a, b = Scratch(machine, machine.new_page_table()), Scratch(machine, machine.new_page_table())
    a.code(CODE.format(leaf=leaf, index=index, mark=0xA))
    b.code(CODE.format(leaf=leaf, index=index, mark=0xB))
    machine.eptp.install(a.table.root, {0: a.table.root, 1: b.table.root})
    return a, b


def test_a_listed_index_switches_the_translation_root_and_charges_vmfunc_once():
    machine = Machine()
    a, b = two_spaces(machine)
    context = a.context()
    before = machine.tally()
    assert machine.run(context).kind is ExitKind.SYSCALL
    spent = machine.tally() - before
    assert context[Reg.R12] == 0xB and context.cr3 == b.table.root
    assert context.eptp_home == a.table.root  # the list still follows the thread
    assert spent.events == {"vmfunc": 1, "syscall": 1}  # no CR3 write is charged
    assert machine.eptp.switches == 1


def test_an_unlisted_index_or_another_leaf_stays_invalid_opcode():
    for leaf, index in ((0, 2), (1, 1)):
        machine = Machine()
        a, _ = two_spaces(machine, leaf=leaf, index=index)
        result = machine.run(a.context())
        assert result.kind is ExitKind.FAULT and result.fault.vector == INVALID_OPCODE
        assert result.fault.instruction == "vmfunc"


def test_a_process_without_a_list_gets_invalid_opcode():
    machine = Machine()
    a, _ = two_spaces(machine)
    machine.eptp.remove(a.table.root)
    assert machine.run(a.context()).fault.vector == INVALID_OPCODE
