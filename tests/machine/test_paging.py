"""Page-table entries in the real x86-64 format, and the PageTable operations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from underbridge.errors import KernelBug
from underbridge.machine.cpu import KERNEL_DATA, Machine
from underbridge.machine.paging import (
    ADDR_MASK,
    PTE_NX,
    PTE_P,
    PTE_RW,
    PTE_US,
    PageFlags,
    decode_pte,
    encode_pte,
)

flags = st.builds(PageFlags, writable=st.booleans(), user=st.booleans(),
                  executable=st.booleans(), pkey=st.integers(0, 15))
frames = st.integers(0, (1 << 52) - 1).map(lambda a: a & ADDR_MASK)


@given(frame=frames, page_flags=flags)
def test_encode_decode_round_trip(frame, page_flags):
    entry = encode_pte(frame, page_flags)
    mapping = decode_pte(entry)
    assert mapping is not None and mapping.frame == frame and mapping.flags == page_flags


@given(frame=frames, page_flags=flags)
def test_encoding_puts_each_bit_where_the_sdm_says(frame, page_flags):
    entry = encode_pte(frame, page_flags)
    assert entry & PTE_P
    assert bool(entry & PTE_RW) == page_flags.writable
    assert bool(entry & PTE_US) == page_flags.user
    assert bool(entry & PTE_NX) == (not page_flags.executable)
    assert (entry >> 59) & 0xF == page_flags.pkey
    assert entry & ADDR_MASK == frame
    assert entry & 0x7800_0000_0000_0000 == page_flags.pkey << 59


def test_not_present_entries_decode_to_none():
    assert decode_pte(0) is None
    assert decode_pte(encode_pte(0x5000, PageFlags()) & ~PTE_P) is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        PageFlags(pkey=16)
    with pytest.raises(ValueError):
        encode_pte(0x1001, PageFlags())


@pytest.fixture(scope="module")
def machine():
    return Machine(accounting=False)


def test_map_lookup_protect_unmap(machine):
    table = machine.new_page_table()
    frame = machine.frames.alloc()
    table.map(0x40_0000, frame, PageFlags(user=True))
    assert table.translate(0x40_0123) == frame + 0x123
    with pytest.raises(KernelBug):
        table.map(0x40_0000, frame, PageFlags())
    table.protect(0x40_0000, PageFlags(user=True, writable=True, pkey=9))
    assert table.lookup(0x40_0000).flags.pkey == 9
    assert table.walk(0x40_0000)[-1] & ADDR_MASK == frame and len(table.walk(0x40_0000)) == 4
    assert table.unmap(0x40_0000) == frame
    assert table.lookup(0x40_0000) is None and table.unmap(0x40_0000) is None
    with pytest.raises(KernelBug):
        table.protect(0x40_0000, PageFlags())
    machine.destroy_page_table(table)


def test_addresses_must_be_aligned_and_canonical(machine):
    table = machine.new_page_table()
    for bad in (0x40_0001, 0x0000_8000_0000_0000, -4096):
        with pytest.raises(ValueError):
            table.map(bad, machine.frames.alloc(), PageFlags())


def test_user_tables_map_nothing_of_the_kernel(machine):
    table = machine.new_page_table()
    assert table.lookup(KERNEL_DATA) is None and not list(table.mappings())
    kernel_data = machine.kernel_space.lookup(KERNEL_DATA)
    assert kernel_data.flags.pkey == 0 and kernel_data.flags.user
    assert KERNEL_DATA in dict(machine.kernel_space.mappings())


def test_destroy_returns_table_frames(machine):
    before = machine.frames.free_frames
    table = machine.new_page_table()
    table.map(0x1234_5000, machine.frames.alloc(), PageFlags())
    leaf = table.unmap(0x1234_5000)
    machine.frames.free(leaf)
    machine.destroy_page_table(table)
    assert machine.frames.free_frames == before
