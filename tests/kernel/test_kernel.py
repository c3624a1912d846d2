"""The kernel's run loop with real guest binaries: syscalls, faults, scheduling."""

from __future__ import annotations

import pytest

from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.process_image import initial_stack
from underbridge.machine.cpu import Machine
from underbridge.machine.faults import GENERAL_PROTECTION


@pytest.fixture
def kernel() -> Kernel:
    return Kernel(Machine())


def test_hello_prints_and_exits(kernel, hello_elf):
    process = kernel.spawn(hello_elf)
    kernel.run()
    assert process.state is GroupState.EXITED and process.exit_status == 0
    assert bytes(process.console) == b"Hello from ring 3 of the underbridge machine!\n"


def test_simulated_cycles_are_identical_across_runs(hello_elf):
    tallies = []
    for _ in range(2):
        machine = Machine()
        kernel = Kernel(machine)
        kernel.spawn(hello_elf)
        kernel.run()
        tallies.append(machine.tally())
    assert tallies[0] == tallies[1]
    assert tallies[0].instructions > 100
    assert tallies[0].events["syscall"] == 2  # write + exit


@pytest.mark.parametrize(
    ("which", "mnemonic"), [("cr3", "mov"), ("hlt", "hlt"), ("wrmsr", "wrmsr")]
)
def test_privileged_instruction_kills_only_its_process(kernel, hello_elf, which, mnemonic):
    attack = build_program(guest_root() / "attacks" / "ring3_privileged.c", base=0x50_0000)
    bystanders = [kernel.spawn(hello_elf, name=f"hello{i}") for i in range(2)]
    attacker = kernel.spawn(attack, ["ring3_privileged", which])
    kernel.run()
    assert attacker.state is GroupState.FAULTED
    assert attacker.fault.vector == GENERAL_PROTECTION and attacker.fault.cpl == 3
    assert attacker.fault.instruction.startswith(mnemonic)
    assert bytes(attacker.console) == f"trying {which}\n".encode()
    for process in bystanders:
        assert process.state is GroupState.EXITED and process.exit_status == 0
    assert kernel.machine.frames.free_frames > 0


def test_processes_are_preempted_round_robin(hello_elf, tmp_path):
    spinner = tmp_path / "spin.c"
    spinner.write_text(
        '#include "ub.h"\nint main(void){ for (volatile long i = 0; i < 200000;'
        ' i++) ; ub_puts("spun\\n"); return 7; }\n'
    )
    order = []
    kernel = Kernel(
        Machine(), quantum=5_000, console=lambda process, _data: order.append(process.name)
    )
    spin = kernel.spawn(build_program(spinner, base=0x60_0000))
    hello = kernel.spawn(hello_elf)
    kernel.run()
    assert order == ["hello", "spin"]  # hello finished while spin was preempted
    assert spin.exit_status == 7 and hello.exit_status == 0


def test_bad_pointer_gives_efault_and_the_guest_goes_on(kernel, tmp_path):
    source = tmp_path / "badptr.c"
    source.write_text(
        '#include "ub.h"\nint main(void){\n'
        "  long r1 = ub_write((void *)0xffffffff80000000UL, 8);\n"
        "  long r2 = ub_write((void *)0x10, 8);\n"
        "  long r3 = ub_syscall0(999);\n"
        '  ub_printf("%ld %ld %ld\\n", r1, r2, r3); return 0; }\n'
    )
    process = kernel.spawn(build_program(source, base=0x40_0000))
    kernel.run()
    assert bytes(process.console) == b"-14 -14 -38\n"
    assert process.exit_status == 0


def test_memory_is_returned_when_processes_end(hello_elf):
    machine = Machine()
    kernel = Kernel(machine)
    before = machine.frames.free_frames
    for _ in range(3):
        kernel.spawn(hello_elf)
    kernel.run()
    assert machine.frames.free_frames == before


def test_initial_stack_follows_sysv_layout():
    image, rsp = initial_stack(["prog", "a", "bc"], 0x10000)
    assert rsp % 16 == 0 and rsp + len(image) == 0x10000
    words = [int.from_bytes(image[i : i + 8], "little") for i in range(0, 40, 8)]
    assert words[0] == 3 and words[4] == 0
    strings = [image[p - rsp : image.index(b"\0", p - rsp)] for p in words[1:4]]
    assert strings == [b"prog", b"a", b"bc"]
