"""Regression: Kernel.spawn let OutOfMemory, ValueError and SyscallError escape.

A program with a 100 MiB .bss raised OutOfMemory (a traceback from `underbridge run
--c`); an in-kernel server linked at a base that is not 16 MiB aligned raised
ValueError from the UnderBridge design's admit; a 16th in-kernel server raised
SyscallError (no protection key left). Each is now a one-line UserError (ElfError,
ResourceExhausted), and the failed spawn leaves no frame, key or cap group behind.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from underbridge.abi.syscalls import Errno
from underbridge.cli import main
from underbridge.cli.common import EXIT_USER_ERROR
from underbridge.errors import ElfError, ResourceExhausted, UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

BIG_BSS = """#include "ub.h"
char big[100 << 20];
int main(int argc, char **argv) { ((volatile char *)big)[argc] = 1; return 0; }
"""


@pytest.fixture(scope="module")
def big_bss_elf(tmp_path_factory):
    source = tmp_path_factory.mktemp("bss") / "bigbss.c"
    source.write_text(BIG_BSS)
    return build_program(source, base=0x40_0000)


def one_line(error: UserError) -> bool:
    return "\n" not in error.args[0] and "Traceback" not in str(error)


def test_a_program_bigger_than_memory_is_a_user_error_and_leaks_nothing(big_bss_elf):
    kernel = Kernel(Machine(accounting=False))
    frames = kernel.machine.frames.free_frames
    with pytest.raises(
        ResourceExhausted, match="not enough physical memory to load bigbss"
    ) as caught:
        kernel.spawn(big_bss_elf)
    assert one_line(caught.value) and caught.value.errno == Errno.ENOMEM
    assert kernel.machine.frames.free_frames == frames
    assert kernel.groups == {}


def test_run_of_a_program_bigger_than_memory_is_one_line_exit_2(big_bss_elf, tmp_path):
    source = tmp_path / "bigbss.c"
    source.write_text(BIG_BSS)
    result = CliRunner().invoke(main, ["run", "--c", str(source)], catch_exceptions=False)
    assert result.exit_code == EXIT_USER_ERROR
    assert result.output.startswith("error: not enough physical memory to load bigbss")


def test_an_in_kernel_server_at_an_unaligned_base_is_an_elf_error(hello_elf):
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    frames, keys = kernel.machine.frames.free_frames, kernel.ipc.keys.available
    with pytest.raises(ElfError, match=r"hello is linked at 0x400000, but in-kernel servers"):
        kernel.spawn(hello_elf, in_kernel=True)
    assert (kernel.machine.frames.free_frames, kernel.ipc.keys.available) == (frames, keys)
    assert kernel.groups == {}


def test_no_protection_key_left_runs_the_server_in_user_space_and_says_why():
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    servers = [
        kernel.spawn(build_program("hello", base=REGION_SIZE * index), in_kernel=True)
        for index in range(1, kernel.ipc.keys.available + 1)
    ]
    assert len(servers) == 15 and kernel.ipc.keys.available == 0
    one_more = build_program("hello", base=REGION_SIZE * 16)
    fallback = kernel.spawn(one_more, in_kernel=True)  # nothing fails (issue 14 item 2)
    assert kernel.placement.domain_of(fallback) is None
    assert fallback.placement_note.startswith("hello runs in user space: no protection key left")
    kernel.run(until=lambda: not fallback.running)
    assert fallback.exit_status == 0 and bytes(fallback.console).startswith(b"Hello from ring 3")
    kernel.kill(servers[0])  # a key comes back, and the same spawn now places it
    placed = kernel.spawn(one_more, in_kernel=True)
    assert kernel.placement.domain_of(placed) is not None and placed.placement_note == ""
