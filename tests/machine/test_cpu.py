"""The Machine: boot, ring transitions, faults decoded, TLB coherence, preemption."""

from __future__ import annotations

import pytest

from underbridge.machine import rings
from underbridge.machine.boot import KERNEL_DATA, KERNEL_STUBS, KERNEL_TEXT
from underbridge.machine.context import SYSCALL_ARG_REGS, Reg
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import GENERAL_PROTECTION, INVALID_OPCODE
from underbridge.machine.oracle import Access, Violation
from underbridge.machine.paging import PageFlags

from .conftest import CODE_VA, DATA_VA, USER_RW


def test_boot_calibrates_a_layout_with_distinct_offsets(machine):
    layout = machine.layout
    offsets = [
        *layout.regs,
        layout.pkru,
        layout.error_code,
        layout.exception_in_flight,
        layout.cs_selector,
    ]
    assert len(set(offsets)) == len(offsets)
    assert all(0 <= offset < layout.size for offset in offsets)


def test_contexts_start_in_the_requested_ring(scratch):
    assert scratch.context(ring=3).cpl == 3
    assert scratch.context(ring=0).cpl == 0
    with pytest.raises(ValueError):
        scratch.context(ring=1)


def test_control_registers_are_configured(machine):
    regs = rings.control_registers(machine.uc)
    assert regs["cr0"] & rings.CR0_WP and regs["cr0"] & rings.CR0_PG
    assert regs["cr4"] & rings.CR4_PKE and regs["cr4"] & rings.CR4_PAE
    assert not regs["cr4"] & (rings.CR4_SMEP | rings.CR4_SMAP)
    assert regs["efer"] & rings.EFER_NXE and regs["efer"] & rings.EFER_SCE


def test_gdt_descriptors_match_the_selectors():
    entries = rings.GDT_ENTRIES
    assert (entries[rings.USER_CS >> 3] >> 45) & 3 == 3  # DPL 3
    assert (entries[rings.USER_CS >> 3] >> 53) & 1 == 1  # L: 64-bit code
    assert (entries[rings.KERNEL_CS >> 3] >> 45) & 3 == 0
    assert rings.STAR >> 48 == rings.USER_CS - 16 - 3  # sysretq loads CS = base+16


def test_syscall_exits_to_the_kernel_with_rip_past_it(scratch):
    scratch.code("mov rax, 42\nmov rdi, 7\nsyscall\nnop")
    context = scratch.context()
    result = scratch.machine.run(context)
    assert result.kind is ExitKind.SYSCALL
    assert context[Reg.RAX] == 42 and context.syscall_args()[0] == 7
    assert context.rip == CODE_VA + 7 + 7 + 2


def test_kernel_can_return_a_value_and_resume(scratch):
    scratch.code("syscall\nmov rbx, rax\nsyscall")
    context = scratch.context()
    scratch.machine.run(context)
    context[Reg.RAX] = 1234
    assert scratch.machine.run(context).kind is ExitKind.SYSCALL
    assert context[Reg.RBX] == 1234


@pytest.mark.parametrize(
    "instruction",
    [
        "mov cr3, rax",
        "hlt",
        "wrmsr",
        "cli",
        "lgdt [rax]",
        "in al, dx",
        "invlpg [rax]",
        "mov cr4, rax",
    ],
)
def test_privileged_instruction_in_ring3_is_gp_with_disassembly(scratch, instruction):
    scratch.code(instruction)
    result = scratch.machine.run(scratch.context())
    assert result.kind is ExitKind.FAULT
    assert result.fault.vector == GENERAL_PROTECTION
    assert result.fault.mnemonic == "#GP"
    assert result.fault.instruction.split()[0] == instruction.split()[0]
    assert result.fault.rip == CODE_VA and result.fault.cpl == 3


def test_invalid_opcode_is_ud(scratch):
    scratch.code("ud2")
    result = scratch.machine.run(scratch.context())
    assert result.fault.vector == INVALID_OPCODE
    assert result.fault.instruction == "ud2"


def test_a_faulting_guest_does_not_stop_the_others(scratch):
    scratch.code("mov cr3, rax", CODE_VA)
    scratch.code("mov rax, 5\nsyscall", CODE_VA + 0x1000)
    bad, good = scratch.context(rip=CODE_VA), scratch.context(rip=CODE_VA + 0x1000)
    assert scratch.machine.run(bad).kind is ExitKind.FAULT
    assert scratch.machine.run(good).kind is ExitKind.SYSCALL
    assert good[Reg.RAX] == 5


def test_kernel_pages_are_absent_from_user_page_tables(scratch):
    scratch.code(f"mov rbx, {KERNEL_DATA:#x}\nmov rax, [rbx]")
    fault = scratch.machine.run(scratch.context()).fault
    assert fault.reason is Violation.NOT_PRESENT and fault.address == KERNEL_DATA
    scratch.code(f"mov rbx, {KERNEL_DATA:#x}\njmp rbx", CODE_VA + 0x1000)
    fault = scratch.machine.run(scratch.context(rip=CODE_VA + 0x1000)).fault
    assert fault.access is Access.FETCH and fault.reason is Violation.NOT_PRESENT


def test_kernel_pages_are_fenced_by_key_0_in_ring0(machine):
    """On the kernel page table, ring-0 code whose PKRU denies key 0 cannot read them."""
    from underbridge.machine.pkru import pkru_allowing

    from .conftest import Scratch

    scratch = Scratch(machine, machine.kernel_space)
    scratch.code(f"mov rbx, {KERNEL_DATA:#x}\nmov rax, [rbx]", 0x7100_0000)
    denied = scratch.context(ring=0, rip=0x7100_0000, pkru=pkru_allowing(read_write=[5]))
    fault = machine.run(denied).fault
    assert fault.reason is Violation.PKEY_ACCESS_DISABLED and fault.cpl == 0
    machine.frames.free(machine.kernel_space.unmap(0x7100_0000))


def test_stop_at_returns_control_before_that_address(scratch):
    scratch.code("mov rax, 5\ncall target\nnop\ntarget: mov rbx, 6\nret")
    scratch.page(0x7E_F000, USER_RW)
    context = scratch.context(ring=0)
    result = scratch.machine.run(context, stop_at=CODE_VA + 12)
    assert result.kind is ExitKind.RETURNED and context.rip == CODE_VA + 12
    assert context[Reg.RAX] == 5 and context[Reg.RBX] == 6


def test_protect_takes_effect_at_once(scratch):
    """TLB coherence: a permission change is seen by the very next run."""
    scratch.page(DATA_VA, USER_RW)
    scratch.code(f"mov qword ptr [{DATA_VA:#x}], 1\nsyscall")
    context = scratch.context()
    assert scratch.machine.run(context).kind is ExitKind.SYSCALL
    scratch.table.protect(DATA_VA, PageFlags(user=True))
    context.rip = CODE_VA
    assert scratch.machine.run(context).fault.reason is Violation.WRITE_READ_ONLY
    scratch.table.protect(DATA_VA, PageFlags(user=True, writable=True, pkey=3))
    context.rip, context.pkru = CODE_VA, 0b11 << 6
    assert scratch.machine.run(context).fault.reason is Violation.PKEY_ACCESS_DISABLED


def test_unmap_and_remap_take_effect_at_once(scratch):
    machine = scratch.machine
    first = scratch.page(DATA_VA, USER_RW, (111).to_bytes(8, "little"))
    scratch.code(f"mov rax, [{DATA_VA:#x}]\nsyscall")
    context = scratch.context()
    machine.run(context)
    assert context[Reg.RAX] == 111
    machine.frames.free(scratch.table.unmap(DATA_VA))
    context.rip = CODE_VA
    assert machine.run(context).fault.reason is Violation.NOT_PRESENT
    scratch.page(DATA_VA, USER_RW, (222).to_bytes(8, "little"))
    context.rip = CODE_VA
    machine.run(context)
    assert context[Reg.RAX] == 222
    del first


def test_switching_address_spaces_switches_translations(machine):
    from .conftest import Scratch

    spaces = [Scratch(machine, machine.new_page_table()) for _ in range(2)]
    for value, space in enumerate(spaces, start=10):
        space.page(DATA_VA, USER_RW, value.to_bytes(8, "little"))
        space.code(f"mov rax, [{DATA_VA:#x}]\nsyscall")
    for _ in range(2):
        for value, space in enumerate(spaces, start=10):
            context = space.context()
            machine.run(context)
            assert context[Reg.RAX] == value


def test_budget_preempts_a_spinning_guest_and_it_resumes(scratch):
    scratch.code("spin: inc rbx\ncmp rbx, 100000\njne spin\nsyscall")
    context = scratch.context()
    result = scratch.machine.run(context, budget=1000)
    assert result.kind is ExitKind.PREEMPTED
    assert 0 < context[Reg.RBX] < 100000
    while (result := scratch.machine.run(context, budget=50_000)).kind is ExitKind.PREEMPTED:
        pass
    assert result.kind is ExitKind.SYSCALL and context[Reg.RBX] == 100000


def test_budget_with_accounting_stops_at_the_first_block_past_it(scratch):
    scratch.code("spin: inc rbx\njmp spin")  # one block of two instructions
    context = scratch.context()
    machine = scratch.machine
    before = machine.tally().instructions
    assert machine.run(context, budget=1001).kind is ExitKind.PREEMPTED
    assert context[Reg.RBX] == 501  # 501 whole blocks reach 1002 >= 1001
    assert machine.tally().instructions - before == 1002


def test_budget_without_accounting_uses_exact_counts():
    from .conftest import Scratch

    machine = Machine(accounting=False)
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("spin: inc rbx\njmp spin")
    context = scratch.context()
    assert machine.run(context, budget=1001).kind is ExitKind.PREEMPTED
    assert context[Reg.RBX] == 501
    assert machine.run(context, budget=1000).kind is ExitKind.PREEMPTED
    assert context[Reg.RBX] == 1001


def test_ring0_guest_runs_on_a_user_page_under_pkru(scratch):
    """The UnderBridge shape: ring-0 code on U=1 pages, its data fenced by PKRU."""
    scratch.page(DATA_VA, PageFlags(user=True, writable=True, pkey=5), b"\x07" + b"\0" * 7)
    scratch.code(f"mov rax, [{DATA_VA:#x}]\nsyscall")
    context = scratch.context(ring=0)
    assert scratch.machine.run(context).kind is ExitKind.SYSCALL
    assert context[Reg.RAX] == 7 and context.cpl == 0
    denied = scratch.context(ring=0, pkru=1 << 10)
    fault = scratch.machine.run(denied).fault
    assert fault.reason is Violation.PKEY_ACCESS_DISABLED and fault.cpl == 0


def test_page_table_pointing_past_ram_is_a_fault_not_a_crash(scratch):
    beyond = scratch.machine.mem.size + 0x10_0000
    scratch.table.map(DATA_VA, beyond, USER_RW)
    scratch.code(f"mov rax, [{DATA_VA:#x}]")
    result = scratch.machine.run(scratch.context())
    assert result.kind is ExitKind.FAULT


def test_two_machines_in_one_process_are_independent():
    from .conftest import Scratch

    machines = [Machine(), Machine()]
    for value, machine in enumerate(machines, start=1):
        scratch = Scratch(machine, machine.new_page_table())
        scratch.code(f"mov rax, {value}\nsyscall")
        context = scratch.context()
        machine.run(context)
        assert context[Reg.RAX] == value


@pytest.mark.parametrize("instruction", ["in al, dx", "out dx, al", "in eax, 0x70", "outsb"])
def test_port_io_in_ring3_has_no_effect(scratch, instruction):
    scratch.page(DATA_VA, USER_RW)
    scratch.code(instruction)
    context = scratch.context()
    context[Reg.RSI] = DATA_VA
    context[Reg.RAX] = 0x1122_3344_5566_7788
    fault = scratch.machine.run(context).fault
    assert fault.vector == GENERAL_PROTECTION and fault.rip == CODE_VA
    assert context.rip == CODE_VA and context[Reg.RAX] == 0x1122_3344_5566_7788


def test_port_io_in_ring0_reads_a_floating_bus_without_the_monitor():
    from .conftest import Scratch

    machine = Machine(monitor=False)  # with it, ring-0 guest I/O is a VM exit
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("mov dx, 0x60\nin al, dx\nsyscall")
    context = scratch.context(ring=0)
    assert machine.run(context).kind is ExitKind.SYSCALL
    assert context[Reg.RAX] & 0xFF == 0xFF


def test_boot_only_code_is_gone_after_boot(machine):
    """PKRU does not govern fetches: no ring-0 guest may find kernel code to jump into."""
    assert machine.kernel_space.lookup(KERNEL_TEXT) is None
    assert machine.kernel_space.lookup(KERNEL_STUBS) is None
    executable = [va for va, m in machine.kernel_space.mappings() if m.flags.executable]
    assert executable == []


def test_boot_leaves_only_the_gdt_page_and_frees_every_calibration_frame():
    """Boot maps probe pages (a ring-3 page, #PF targets) and stubs; none outlives it."""
    machine = Machine(accounting=False, monitor=False)
    kernel = machine.kernel_space
    assert [va for va, _ in kernel.mappings()] == [KERNEL_DATA]
    assert machine.frames.in_use == kernel.table_frames + 1  # + the GDT's frame


def test_ring0_hlt_without_the_monitor_is_reported_not_fatal():
    from .conftest import Scratch

    machine = Machine(monitor=False)  # with it, hlt is a VM exit
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("nop\nhlt\nnop")
    context = scratch.context(ring=0)
    assert machine.run(context).kind is ExitKind.HALTED
    fault = machine.halt_fault(context)
    assert fault.mnemonic == "HLT" and fault.rip == CODE_VA + 1 and fault.instruction == "hlt"


def test_registers_read_and_written_at_once_match_one_by_one(machine):
    context = machine.new_context(ring=3, page_table=machine.kernel_space, rip=0x1000, rsp=0)
    assert machine.layout.gprs_offset() >= 0  # the engine keeps RAX..R15 together
    for reg in Reg:
        context[reg] = 0x1111 * (int(reg) + 1)
    assert context.syscall_args() == tuple(context[r] for r in SYSCALL_ARG_REGS)
    context.set_registers((Reg.R10, Reg.RAX, Reg.R8), (7, -1, 2**64 + 3))
    assert context.registers((Reg.RAX, Reg.R8, Reg.R10, Reg.R9)) == (
        2**64 - 1,
        3,
        7,
        0x1111 * (int(Reg.R9) + 1),
    )


def test_a_reset_context_is_a_new_context(machine):
    """The kernel reuses one context for its gate calls: reset must leave nothing behind."""
    table = machine.new_page_table()
    used = machine.new_context(ring=3, page_table=machine.kernel_space, rip=1, rsp=2, pkru=3)
    for reg in Reg:
        used[reg] = 0xDEAD
    used.end_exception()
    reset = machine.reset_context(
        used, ring=0, page_table=table, rip=0x40_1000, rsp=0x7000, pkru=0x55
    )
    fresh = machine.new_context(ring=0, page_table=table, rip=0x40_1000, rsp=0x7000, pkru=0x55)
    assert reset is used and reset.raw() == fresh.raw()
