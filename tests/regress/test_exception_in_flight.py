"""Regression: a thread's second fault came back as #DF, its third as a silent halt.

Unicorn does not deliver exceptions through an IDT, so QEMU's "exception in flight"
(the double-fault tracker) stayed set in the saved context; the next #PF of the same
thread was escalated to #DF, then to a triple fault that stops the CPU with no event.
Fixed by CpuContext.end_exception, called by the machine on every fault exit.
"""

from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import PAGE_FAULT

from ..machine.conftest import CODE_VA, Scratch


def test_a_thread_faulting_three_times_gets_three_page_faults():
    machine = Machine()
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("mov rax, [0x900000]")
    context = scratch.context()
    for _ in range(3):
        context.rip = CODE_VA
        result = machine.run(context)
        assert result.kind is ExitKind.FAULT and result.fault.vector == PAGE_FAULT
