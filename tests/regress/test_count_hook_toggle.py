"""Regression: the first fault after boot was reported as #DF (or the CPU halted).

Boot ran one emu_start with count=10 and later ones with count=0. Unicorn then deletes
its counting hook and flushes translations, and on the next start takes a silent page
fault at the last PC of the previous run (a page boot had unmapped), leaving a #PF "in
flight" so the guest's first real #PF became #DF. Fixed by never mixing the two: with
accounting on `count` is never used; with it off it is always used (Machine._emu_start).
"""

import pytest

from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import PAGE_FAULT

from ..machine.conftest import Scratch


@pytest.mark.parametrize("accounting", [True, False])
def test_first_fault_after_boot_and_after_budgeted_runs_is_a_page_fault(accounting):
    machine = Machine(accounting=accounting)
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("mov rax, [0x900000]")
    for budget in (0, 100, 0, 5):
        result = machine.run(scratch.context(), budget=budget)
        assert result.kind is ExitKind.FAULT and result.fault.vector == PAGE_FAULT
