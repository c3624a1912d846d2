"""The Linux personality: a real musl program, its syscalls served by kernel/linux_abi.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.abi.syscalls import Errno
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel import linux_abi
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.linux_abi import LinuxSys
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import Thread
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine
from underbridge.machine.physmem import PAGE_SIZE

PROBE_BASE = 0x0800_0000


@pytest.fixture(scope="module")
def probe_elf() -> Path:
    return build_program(
        guest_root() / "apps" / "libc_probe" / "libc_probe.c", base=PROBE_BASE, libc="musl"
    )


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


def test_every_named_syscall_has_its_handler() -> None:
    assert set(linux_abi.HANDLERS) == set(LinuxSys)


# -- the handlers one by one, on a real (not yet started) Linux-ABI cap group ---------------


@pytest.fixture
def linux_thread(probe_elf: Path) -> tuple[Kernel, Thread]:
    kernel = Kernel(Machine())
    group = kernel.spawn(probe_elf, ["libc_probe"], abi="linux")
    return kernel, group.threads[0]


def call(kernel: Kernel, thread: Thread, number: int, *args: int) -> int:
    result = linux_abi.dispatch(kernel, thread, number, (*args, 0, 0, 0, 0, 0, 0)[:6])
    assert result is not None
    return result


def test_brk_grows_and_shrinks_the_heap(linux_thread: tuple[Kernel, Thread]) -> None:
    kernel, thread = linux_thread
    table = thread.group.vmspace.table
    start = call(kernel, thread, LinuxSys.BRK, 0)
    assert start % PAGE_SIZE == 0 and table.lookup(start) is None
    grown = start + 3 * PAGE_SIZE + 5
    assert call(kernel, thread, LinuxSys.BRK, grown) == grown
    assert all(table.lookup(start + i * PAGE_SIZE) is not None for i in range(4))
    assert call(kernel, thread, LinuxSys.BRK, start + PAGE_SIZE) == start + PAGE_SIZE
    assert table.lookup(start) is not None and table.lookup(start + PAGE_SIZE) is None
    too_far = start + linux_abi.HEAP_LIMIT + PAGE_SIZE
    assert call(kernel, thread, LinuxSys.BRK, too_far) == start + PAGE_SIZE  # refused


def test_mmap_serves_private_anonymous_memory_only(linux_thread: tuple[Kernel, Thread]) -> None:
    kernel, thread = linux_thread
    anon = linux_abi.MAP_PRIVATE | linux_abi.MAP_ANONYMOUS
    rw = 3
    assert (
        call(kernel, thread, LinuxSys.MMAP, 0, PAGE_SIZE, rw, linux_abi.MAP_PRIVATE, 3, 0)
        == -Errno.EINVAL
    )
    assert (
        call(kernel, thread, LinuxSys.MMAP, 0, PAGE_SIZE, rw | linux_abi.PROT_EXEC, anon, -1, 0)
        == -Errno.EINVAL
    )
    free = kernel.machine.frames.free_frames
    first = call(kernel, thread, LinuxSys.MMAP, 0, 5 * PAGE_SIZE, rw, anon, -1, 0)
    second = call(kernel, thread, LinuxSys.MMAP, 0, PAGE_SIZE, rw, anon, -1, 0)
    assert first > 0 and second == first - PAGE_SIZE  # top-down, no overlap
    assert call(kernel, thread, LinuxSys.MUNMAP, first, 5 * PAGE_SIZE) == 0
    assert call(kernel, thread, LinuxSys.MUNMAP, second, PAGE_SIZE) == 0
    assert kernel.machine.frames.free_frames >= free - 4  # page-table pages may stay
    stack_page = thread.context[Reg.RSP] & ~(PAGE_SIZE - 1)
    assert call(kernel, thread, LinuxSys.MUNMAP, stack_page, PAGE_SIZE) == -Errno.EINVAL


def test_console_fds_and_bad_pointers(linux_thread: tuple[Kernel, Thread]) -> None:
    kernel, thread = linux_thread
    assert call(kernel, thread, LinuxSys.WRITE, 3, 0x1000, 1) == -linux_abi.LinuxErrno.EBADF
    assert call(kernel, thread, LinuxSys.WRITEV, 1, 0xDEAD_0000, 1) == -Errno.EFAULT
    assert call(kernel, thread, LinuxSys.IOCTL, 1, 0x5413, 0) == -linux_abi.LinuxErrno.ENOTTY


def test_arch_prctl_sets_a_canonical_fs_base(linux_thread: tuple[Kernel, Thread]) -> None:
    kernel, thread = linux_thread
    assert call(kernel, thread, LinuxSys.ARCH_PRCTL, linux_abi.ARCH_SET_FS, 0x1234_5000) == 0
    assert thread.context[Reg.FS_BASE] == 0x1234_5000
    assert (
        call(kernel, thread, LinuxSys.ARCH_PRCTL, linux_abi.ARCH_SET_FS, 1 << 48) == -Errno.EINVAL
    )
    assert call(kernel, thread, LinuxSys.ARCH_PRCTL, 0x1001, 0) == -Errno.EINVAL


def test_unserved_numbers_are_enosys_and_counted(linux_thread: tuple[Kernel, Thread]) -> None:
    kernel, thread = linux_thread
    assert call(kernel, thread, 2) == -linux_abi.LinuxErrno.ENOSYS  # open: files are IPC
    assert thread.group.linux is not None
    assert thread.group.linux.unimplemented[2] == 1
