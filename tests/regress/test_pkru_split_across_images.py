"""Regression: two in-kernel servers joined a wrpkru across the boundary of their regions.

Nothing kept an in-kernel server's segments inside its own region. Server A put an
executable page ending in 0f 01 at the top of its region, right below server B's first
page, which began with ef: each image scanned clean, and A's thread, jumping to its
last two bytes, ran a wrpkru with EAX = 0 (protection keys govern data accesses, not
instruction fetches), opened every key and read the kernel's data. Found while checking
the scanner against the PKU Pitfalls catalogue (Connor et al., USENIX Security 2020).
Fixed: every segment of an in-kernel server must lie in the lower half of its region
(the upper half holds only the kernel's non-executable pages), so no executable page of
one image adjoins another's.
"""

from __future__ import annotations

import struct

import pytest

from underbridge.bridge.scan import scan_elf
from underbridge.errors import UserError
from underbridge.guestbuild.asm import assemble
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.cpu import Machine
from underbridge.machine.faults import PAGE_FAULT
from underbridge.machine.oracle import Access, Violation

from ..bridge.test_scan import PF_RX, make_elf

A_BASE, B_BASE = 0x0300_0000, 0x0400_0000
ZERO_EAX_ECX_EDX = "xor eax, eax\nxor ecx, ecx\nxor edx, edx\n"


def server_a(tail_page: int) -> bytes:
    """Code at A_BASE that jumps to the last two bytes (0f 01) of the page at tail_page."""
    jump = assemble(f"{ZERO_EAX_ECX_EDX}mov rbx, {tail_page + 0xFFE:#x}\njmp rbx")
    return make_elf([(A_BASE, jump, PF_RX), (tail_page, b"\xcc" * 0xFFE + b"\x0f\x01", PF_RX)])


def server_b() -> bytes:
    """ef, then what would run after the wrpkru (a read of key-0 kernel data); its own
    thread spins at B_BASE + 0x100."""
    after = assemble(f"movabs rbx, {KERNEL_DATA:#x}\nmov rax, qword ptr [rbx]\nud2")
    code = b"\xef" + after + b"\xcc" * (0xFF - len(after)) + assemble("2: pause\njmp 2b")
    elf = bytearray(make_elf([(B_BASE, code, PF_RX)]))
    struct.pack_into("<Q", elf, 24, B_BASE + 0x100)  # e_entry
    return bytes(elf)


def test_a_server_cannot_place_code_next_to_another_servers():
    a, b = server_a(B_BASE - 0x1000), server_b()
    assert scan_elf(a).pkru_writers == () and scan_elf(b).pkru_writers == ()  # each clean
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    kernel.spawn(b, ["b"], name="b", in_kernel=True)
    keys = kernel.ipc.keys.available
    with pytest.raises(UserError) as refused:
        kernel.spawn(a, ["a"], name="a", in_kernel=True)
    assert str(refused.value).splitlines()[0] == (
        f"a: its segment at {B_BASE - 0x1000:#x} lies outside [{A_BASE:#x}, "
        f"{A_BASE + REGION_SIZE // 2:#x}), the lower half of its kernel-space region"
    )
    assert kernel.ipc.keys.available == keys


def test_code_at_the_top_of_the_lower_half_runs_into_an_unmapped_page():
    tail = A_BASE + REGION_SIZE // 2 - 0x1000  # the highest page a server may use
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    kernel.spawn(server_b(), ["b"], name="b", in_kernel=True)
    a = kernel.spawn(server_a(tail), ["a"], name="a", in_kernel=True)
    kernel.run(until=lambda: not a.running)
    fault = a.fault
    assert fault is not None and fault.vector == PAGE_FAULT
    assert (fault.rip, fault.address, fault.access, fault.reason) == (
        tail + 0xFFE,
        tail + 0x1000,
        Access.FETCH,
        Violation.NOT_PRESENT,
    )
