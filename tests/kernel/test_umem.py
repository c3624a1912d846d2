"""Checked copies between the kernel and a guest's memory."""

from __future__ import annotations

import pytest

from underbridge.abi.syscalls import Errno
from underbridge.errors import SyscallError
from underbridge.kernel.umem import MAX_COPY, copy_in, copy_out
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags

BASE = 0x50_0000


@pytest.fixture(scope="module")
def space():
    machine = Machine(accounting=False)
    table = machine.new_page_table()
    for offset, flags in (
        (0, PageFlags(user=True, writable=True)),
        (0x1000, PageFlags(user=True, writable=True)),
        (0x2000, PageFlags(user=True)),
        (0x3000, PageFlags(writable=True)),
    ):  # supervisor page
        table.map(BASE + offset, machine.frames.alloc(), flags)
    table.map(BASE + 0x8000, machine.frames.alloc(), PageFlags(user=True, writable=True, pkey=6))
    return machine, table


def test_a_page_under_a_key_the_caller_cannot_open_is_efault(space):
    """The confused-deputy rule: the kernel copies only what the caller could touch."""
    machine, table = space
    keyed = BASE + 0x8000
    assert copy_in(machine, table, keyed, 8, pkru=0) == bytes(8)
    for pkru in (1 << 12, 3 << 12):  # AD for key 6, or AD and WD
        with pytest.raises(SyscallError):
            copy_in(machine, table, keyed, 8, pkru=pkru)
    copy_in(machine, table, keyed, 8, pkru=2 << 12)  # WD only: reading is fine
    with pytest.raises(SyscallError):
        copy_out(machine, table, keyed, b"x", pkru=2 << 12)


def test_copy_round_trip_across_a_page_boundary(space):
    machine, table = space
    data = bytes(range(256)) * 20
    copy_out(machine, table, BASE + 0x1000 - 100, data[:200], pkru=0)
    assert copy_in(machine, table, BASE + 0x1000 - 100, 200, pkru=0) == data[:200]


@pytest.mark.parametrize(
    ("vaddr", "length"),
    [
        (BASE + 0x4000, 1),  # unmapped
        (BASE + 0x3000, 8),  # supervisor page
        (KERNEL_DATA, 8),  # the kernel's own data
        (BASE + 0x2FF0, 0x20),  # runs from a user page into a supervisor one
        (-8, 8),
        (BASE, MAX_COPY + 1),
    ],
)
def test_copy_in_refuses_what_the_guest_cannot_read(space, vaddr, length):
    machine, table = space
    with pytest.raises(SyscallError) as error:
        copy_in(machine, table, vaddr, length, pkru=0)
    assert error.value.errno == Errno.EFAULT


def test_copy_out_refuses_read_only_pages_and_writes_nothing(space):
    machine, table = space
    copy_out(machine, table, BASE + 0x1FF0, b"\0" * 16, pkru=0)
    with pytest.raises(SyscallError):
        copy_out(machine, table, BASE + 0x1FF0, b"\xff" * 32, pkru=0)  # tail is read-only
    assert copy_in(machine, table, BASE + 0x1FF0, 16, pkru=0) == b"\0" * 16
