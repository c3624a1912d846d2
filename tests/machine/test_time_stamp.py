"""rdtsc and rdtscp read the machine's clock: simulated cycles, or instructions without
accounting; never the host's TSC (machine/hooks.py, Machine.clock)."""

from __future__ import annotations

from underbridge.machine.context import Reg
from underbridge.machine.costs import COSTS
from underbridge.machine.cpu import ExitKind, Machine

from .conftest import Scratch

NOPS = 37
# rdtsc ends its block (a jump follows); the next block is NOPS nops, a jump, and the
# block after it reads the clock again with rdtscp (which also loads ECX), then stops.
TWO_READS = f"""
    mov rcx, 0x99
    rdtsc
    mov r12, rax
    mov r13, rdx
    jmp middle
middle:
    {"nop; " * NOPS}
    jmp last
last:
    rdtscp
    syscall
"""


def run_two_reads(machine: Machine) -> tuple[object, int, int]:
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code(TWO_READS)
    context = scratch.context()
    before = machine.clock()
    assert machine.run(context).kind is ExitKind.SYSCALL
    first = context[Reg.R13] << 32 | context[Reg.R12]
    second = context[Reg.RDX] << 32 | context[Reg.RAX]
    return context, first - before, second - first


def test_rdtsc_reads_the_cycle_count_a_block_at_a_time():
    machine = Machine()
    context, first, elapsed = run_two_reads(machine)
    assert first == 5  # the first block (mov, rdtsc, mov, mov, jmp), counted when it starts
    # the middle block (nops, jmp), then the last: rdtscp and the costed `syscall`
    assert elapsed == NOPS + 1 + 1 + COSTS["syscall"].cycles
    assert context[Reg.RCX] == 0  # rdtscp's IA32_TSC_AUX
    assert machine.clock() == machine.tally().cycles


def test_without_accounting_rdtsc_reads_the_instruction_count():
    context, first, elapsed = run_two_reads(Machine(accounting=False))
    assert (first, elapsed) == (5, NOPS + 1 + 2)
    assert context[Reg.RCX] == 0


def test_the_clock_is_the_same_on_every_run():
    readings = [run_two_reads(Machine())[1:] for _ in range(2)]
    assert readings[0] == readings[1]
