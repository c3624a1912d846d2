"""Page-table entries in the real x86-64 format, and the PageTable operations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from underbridge.errors import KernelBug
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.cpu import Machine
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
from underbridge.machine.physmem import PAGE_SIZE

flags = st.builds(
    PageFlags,
    writable=st.booleans(),
    user=st.booleans(),
    executable=st.booleans(),
    pkey=st.integers(0, 15),
)
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


# -- empty tables are freed ---------------------------------------------------------

# Indices near the edges of each level, so sequences share and split tables at every
# level, in both canonical halves.
_EDGES = (0, 1, 255, 256, 510, 511)
_VADDRS = sorted(
    {
        ((i4 << 39 | i3 << 30 | i2 << 21 | i1 << 12) | (0xFFFF_0000_0000_0000 if i4 >= 256 else 0))
        for i4 in (0, 1, 255, 256, 511)
        for i3 in _EDGES[::2]
        for i2 in _EDGES[1::2]
        for i1 in (0, 511)
    }
)
_OPS = st.lists(st.tuples(st.sampled_from(("map", "unmap")), st.sampled_from(_VADDRS)), max_size=60)


def _tables_needed(vaddrs) -> int:
    """The tables a page table with no empty one holds for these pages: the root, and one
    table per distinct PML4, PDPT and PD entry in use."""
    low48 = [v & ((1 << 48) - 1) for v in vaddrs]
    return 1 + len({(shift, v >> shift) for v in low48 for shift in (39, 30, 21)})


@given(ops=_OPS)
def test_random_map_unmap_matches_a_dict_and_keeps_no_empty_table(machine, ops):
    before = machine.frames.in_use
    table = machine.new_page_table()
    model: dict[int, int] = {}
    for op, vaddr in ops:
        if op == "map" and vaddr not in model:
            model[vaddr] = machine.frames.alloc()
            table.map(vaddr, model[vaddr], PageFlags(writable=True))
        elif op == "map":
            with pytest.raises(KernelBug):
                table.map(vaddr, model[vaddr], PageFlags())
        else:
            frame = table.unmap(vaddr)
            assert frame == model.pop(vaddr, None)
            if frame is not None:
                machine.frames.free(frame)
        assert table.table_frames == _tables_needed(model)
    assert {v: table.translate(v + 8) for v in _VADDRS} == {
        v: model[v] + 8 if v in model else None for v in _VADDRS
    }
    assert dict(table.mappings()).keys() == model.keys()
    assert machine.frames.in_use == before + table.table_frames + len(model)
    for vaddr in list(model):
        machine.frames.free(table.unmap(vaddr))
    assert table.table_frames == 1 and not list(table.mappings())
    machine.destroy_page_table(table)
    assert machine.frames.in_use == before


def test_unmap_frees_only_the_tables_it_emptied(machine):
    table = machine.new_page_table()
    near, far = 0x40_0000, 0x40_0000 + (1 << 39)  # other PML4 entries: separate paths
    for vaddr in (near, near + PAGE_SIZE, far):
        table.map(vaddr, machine.frames.alloc(), PageFlags())
    assert table.table_frames == 1 + 3 + 3
    machine.frames.free(table.unmap(near))
    assert table.table_frames == 7 and table.translate(near + PAGE_SIZE) is not None
    machine.frames.free(table.unmap(far))
    assert table.table_frames == 4 and table.walk(far) == [0]
    machine.frames.free(table.unmap(near + PAGE_SIZE))
    assert table.table_frames == 1 and table.walk(near) == [0]
    machine.destroy_page_table(table)
