"""The Linux personality: a real musl program, its syscalls served by kernel/linux_abi.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.errors import UserError
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.linux_abi import LinuxSys
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.machine.cpu import Machine
from underbridge.toolchain import build_program, guest_root

PROBE_BASE = 0x0800_0000


@pytest.fixture(scope="module")
def probe_elf() -> Path:
    return build_program(guest_root() / "apps" / "libc_probe" / "libc_probe.c",
                         base=PROBE_BASE, libc="musl")


def run_probe(elf: Path) -> tuple[Kernel, CapGroup]:
    kernel = Kernel(Machine())
    group = kernel.spawn(elf, ["libc_probe", "arg"], abi="linux")
    kernel.run()
    return kernel, group


def test_musl_program_runs_on_the_personality(probe_elf: Path) -> None:
    _, group = run_probe(probe_elf)
    console = bytes(group.console).decode()
    assert group.state is GroupState.EXITED, console
    assert group.exit_status == 7, console
    assert "FAIL" not in console
    assert console.count("ok: ") == 7
    assert group.linux is not None
    assert group.linux.unimplemented == {102: 1}  # getuid, asked for once


def test_heap_and_mmaps_are_given_back_when_the_program_ends(probe_elf: Path) -> None:
    kernel = Kernel(Machine())
    free_before = kernel.machine.frames.free_frames
    group = kernel.spawn(probe_elf, ["libc_probe", "arg"], abi="linux")
    kernel.run()
    assert group.exit_status == 7
    assert group.vmspace.anon_frames == {}
    # Page-table frames of the dead space may be kept for reuse; the 4 MiB block is not.
    assert free_before - kernel.machine.frames.free_frames < 64


def test_runs_are_deterministic(probe_elf: Path) -> None:
    cycles = {run_probe(probe_elf)[0].machine.tally().cycles for _ in range(2)}
    assert len(cycles) == 1


def test_a_linux_program_cannot_go_in_kernel(probe_elf: Path) -> None:
    kernel = Kernel(Machine(), ipc="underbridge")
    with pytest.raises(UserError, match="user space only"):
        kernel.spawn(probe_elf, abi="linux", in_kernel=True)


def test_the_table_names_what_musl_needs() -> None:
    assert {LinuxSys.BRK, LinuxSys.MMAP, LinuxSys.WRITEV, LinuxSys.ARCH_PRCTL,
            LinuxSys.EXIT_GROUP} <= set(LinuxSys)
