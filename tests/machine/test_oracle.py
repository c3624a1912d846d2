"""The emulated MMU agrees with the Intel SDM's access rules (oracle.py) on every case.

This is the guarantee our isolation rests on: ring-0 accesses to U=1 pages obey PKRU,
WD binds ring 0 only with CR0.WP=1, fetches ignore PKRU, and so on.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.machine.context import Reg
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import PAGE_FAULT
from underbridge.machine.oracle import Access, Cpu, Page, Violation, violations
from underbridge.machine.paging import PageFlags

from .conftest import USER_CODE

TARGET = 0x60_0000
PROBES = {  # each ends in `syscall` when the access succeeds
    Access.READ: (0x40_0000, "mov rax, [rbx]\nsyscall"),
    Access.WRITE: (0x40_1000, "mov [rbx], rax\nsyscall"),
    Access.FETCH: (0x40_2000, "jmp rbx"),
}
SYSCALL = bytes.fromhex("0f05")


@pytest.fixture(scope="module")
def bench():
    from .conftest import Scratch

    machine = Machine(accounting=False)
    scratch = Scratch(machine, machine.new_page_table())
    for vaddr, source in PROBES.values():
        scratch.code(source, vaddr, USER_CODE)
    return scratch


def observe(bench, page: Page, access: Access, cpu: Cpu):
    """Run the probe for `access` against a target page set up as `page`."""
    machine, table = bench.machine, bench.table
    old = table.unmap(TARGET)
    if old is not None:
        machine.frames.free(old)
    if page.present:
        flags = PageFlags(
            writable=page.writable, user=page.user, executable=page.executable, pkey=page.pkey
        )
        bench.page(TARGET, flags, SYSCALL)
        machine.code_changed(table)
    context = bench.context(ring=cpu.cpl, rip=PROBES[access][0], pkru=cpu.pkru)
    context[Reg.RBX] = TARGET
    machine.set_paging_controls(context, write_protect=cpu.wp, protection_keys=cpu.pke)
    return machine.run(context, budget=64)


def check(bench, page: Page, access: Access, cpu: Cpu) -> None:
    expected = violations(page, access, cpu)
    result = observe(bench, page, access, cpu)
    if not expected:
        assert result.kind is ExitKind.SYSCALL, (page, access, cpu, result)
        return
    assert result.kind is ExitKind.FAULT, (page, access, cpu, expected)
    fault = result.fault
    assert fault.vector == PAGE_FAULT, fault.describe()
    assert fault.address == TARGET
    assert fault.access is access
    assert fault.cpl == cpu.cpl
    assert fault.reason in expected, (fault.describe(), expected)


pages = st.builds(
    Page,
    present=st.booleans(),
    writable=st.booleans(),
    user=st.booleans(),
    executable=st.booleans(),
    pkey=st.integers(0, 15),
)
cpus = st.builds(
    Cpu,
    cpl=st.sampled_from([0, 3]),
    pkru=st.integers(0, 2**32 - 1),
    wp=st.booleans(),
    pke=st.booleans(),
)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(page=pages, access=st.sampled_from(list(Access)), cpu=cpus)
def test_machine_agrees_with_sdm_oracle(bench, page, access, cpu):
    check(bench, page, access, cpu)


KEY = 7
KEY_STATES = {"open": 0, "AD": 1 << (2 * KEY), "WD": 2 << (2 * KEY), "AD+WD": 3 << (2 * KEY)}


@pytest.mark.parametrize(
    ("cpl", "access", "writable", "wp", "key_state"),
    list(
        itertools.product(
            [0, 3], [Access.READ, Access.WRITE], [True, False], [True, False], KEY_STATES
        )
    ),
)
def test_pkru_rules_exhaustively_on_user_pages(bench, cpl, access, writable, wp, key_state):
    """Every PKRU state x ring x R/W x WP on a U=1 page, including ring 0."""
    page = Page(present=True, writable=writable, user=True, executable=False, pkey=KEY)
    check(bench, page, access, Cpu(cpl=cpl, pkru=KEY_STATES[key_state], wp=wp))


def test_ring0_read_under_pkru_ad_is_a_protection_key_fault(bench):
    """The fact UnderBridge is built on, stated on its own."""
    page = Page(present=True, writable=True, user=True, executable=False, pkey=KEY)
    result = observe(bench, page, Access.READ, Cpu(cpl=0, pkru=KEY_STATES["AD"]))
    assert result.fault is not None
    assert result.fault.reason is Violation.PKEY_ACCESS_DISABLED


def test_supervisor_pages_ignore_pkru(bench):
    page = Page(present=True, writable=True, user=False, executable=False, pkey=KEY)
    result = observe(bench, page, Access.WRITE, Cpu(cpl=0, pkru=0xFFFF_FFFF))
    assert result.kind is ExitKind.SYSCALL
