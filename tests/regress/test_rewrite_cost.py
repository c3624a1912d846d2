"""Regression: the rewriter ran for more than 400 s on a mutated ELF with 8 MiB of code.

It decoded every instruction in detail with capstone (about 100 times the cost of the
plain sweep, and gigabytes of memory for 8 MiB) and kept no limit. Fixed: the plain sweep
is shared with the scanner and read as text, the detailed decoding is kept for the few
instructions that need it, and a binary with more than MAX_CODE_BYTES of executable
pages, or more than MAX_SITES spots to patch, is refused before any work.
"""

from __future__ import annotations

import time

import pytest

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite import (
    MAX_CODE_BYTES,
    MAX_SITES,
    CodeTooLarge,
    RewriteRefused,
    rewrite_elf,
)
from underbridge.elf.image import PAGE_SIZE
from underbridge.errors import UserError
from underbridge.guestbuild.asm import assemble
from underbridge.kernel.ipc.kernel_space import IO_ROUTINES_PAGE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

from ..bridge.test_rewrite import make_elf

BASE = 0x0300_0000  # an in-kernel server's region
IO = IoRoutines(inb=IO_ROUTINES_PAGE, outb=IO_ROUTINES_PAGE + 0x40)
# 2 KiB of code to repeat: two sites (a hidden wrpkru, port input), then ordinary code
# whose references stay inside the unit (so every copy is the same program): a direct
# call and jcc, RIP-relative loads of data and the unit's own address.
UNIT = """u:
  mov eax, 0x90ef010f
  add ecx, eax
  add ecx, eax
  in al, dx
  add ecx, eax
  add ecx, eax
  lea rsi, [rip + u]
  .rept 56
  mov rax, qword ptr [rip + 0x10000000]
  mov rbx, qword ptr [rbp - 0x18]
  add rbx, rax
  cmp rbx, 0x10
  jne 1f
  call u
1:
  .endr
  ret
  .balign 2048, 0xcc
"""


def rewrite_seconds(units: int) -> tuple[float, int]:
    """CPU seconds to rewrite `units` copies of UNIT (one process: CPU time is less
    disturbed by other jobs than wall time), and the number of changes."""
    data = make_elf(BASE, assemble(UNIT) * units)
    start = time.process_time()
    changes = len(rewrite_elf(data, name=f"units{units}", io_routines=IO).changes)
    return time.process_time() - start, changes


@pytest.mark.slow
def test_the_rewriters_cost_grows_linearly_with_the_code():
    small, big = 64, 512  # 128 KiB and 1 MiB of code, 128 and 1024 sites
    rewrite_seconds(4)  # warm up: capstone, regexes, assembler cache
    small_seconds, small_changes = rewrite_seconds(small)
    big_seconds, big_changes = rewrite_seconds(big)
    assert (small_changes, big_changes) == (2 * small, 2 * big)
    ratio = big / small
    # Linear: about `ratio` times; a quadratic part would give ratio**2 (64 here).
    assert big_seconds < 3 * ratio * small_seconds, (small_seconds, big_seconds)


def too_large() -> bytes:
    return make_elf(BASE, b"\x90" * (MAX_CODE_BYTES - PAGE_SIZE) + b"\xc3" * (2 * PAGE_SIZE))


def test_more_code_than_the_limit_is_refused_before_any_work():
    start = time.process_time()
    with pytest.raises(CodeTooLarge) as refused:
        rewrite_elf(too_large(), name="big", io_routines=IO)
    assert time.process_time() - start < 1.0  # sweeping 4 MiB would take seconds
    assert str(refused.value).splitlines()[0] == (
        "big: 4.0 MiB of executable pages, more than the 4 MiB a server in kernel space "
        "may have (loading scans and rewrites every byte)"
    )


def test_spawn_in_kernel_space_refuses_too_much_code_with_one_line():
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    keys = kernel.ipc.keys.available
    with pytest.raises(UserError) as refused:
        kernel.spawn(too_large(), ["big"], name="big", in_kernel=True, rewrite=False)
    assert str(refused.value).splitlines()[0].startswith("big: 4.0 MiB of executable pages")
    assert kernel.ipc.keys.available == keys  # no protection key left behind
    assert kernel.groups == {}
    # A server that may run in user space instead does (ring 3 makes it harmless).
    group = kernel.spawn(too_large(), ["big"], name="big", in_kernel=True, if_unsafe="user")
    assert group.threads[0].context.cpl == 3
    assert kernel.placement.domain_of(group) is None


def test_more_sites_than_the_limit_are_refused():
    hidden = assemble("mov eax, 0x90ef010f")  # one site each
    data = make_elf(BASE, hidden * (MAX_SITES + 1) + b"\xc3")
    with pytest.raises(RewriteRefused, match=rf"^units: {MAX_SITES + 1} spots to patch "):
        rewrite_elf(data, name="units")
    assert len(rewrite_elf(make_elf(BASE, hidden * 8 + b"\xc3"), name="units").changes) == 8
