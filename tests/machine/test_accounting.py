"""Simulated cycles: per-block instruction counts, costed instructions, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.elf.image import parse_elf
from underbridge.guestbuild.asm import assemble
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.machine.accounting import (
    Accounting,
    Charges,
    Tally,
    block_cost,
    instruction_event,
    is_mov_to_cr3,
)
from underbridge.machine.costs import COSTS, REFERENCE, cycles
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.native_accounting import NativeAccounting

from .conftest import Scratch


@pytest.mark.parametrize(
    ("source", "event"),
    [
        ("wrpkru", "wrpkru"),
        ("vmfunc", "vmfunc"),
        ("syscall", "syscall"),
        ("sysretq", "sysret"),
        (".byte 0x0f, 0x07", "sysret"),
        ("swapgs", "swapgs"),
        ("mov cr3, rax", "cr3_write"),
        ("mov cr3, r12", "cr3_write"),
        ("mov cr4, rax", None),
        ("mov rax, cr3", None),
        ("nop", None),
        ("rdpkru", None),
    ],
)
def test_costed_instructions_are_recognised_by_encoding(source, event):
    assert instruction_event(assemble(source)) == event


def test_mov_to_cr11_is_not_cr3():
    assert not is_mov_to_cr3(bytes.fromhex("44 0f 22 d8"))  # REX.R: cr11


def test_block_cost_adds_primitives_instead_of_one_cycle():
    code = assemble("mov eax, 0\nxor ecx, ecx\nxor edx, edx\nwrpkru\nsyscall")
    cost = block_cost(code, 0)
    assert cost.instructions == 5
    assert cost.cycles == 3 + cycles("wrpkru") + cycles("syscall")
    assert cost.events == ("wrpkru", "syscall")


def test_every_cost_row_cites_a_source():
    for name, cost in {**COSTS, **REFERENCE}.items():
        assert cost.cycles > 0 and len(cost.source) > 10, name


def test_loop_is_counted_exactly_and_deterministically():
    counts = []
    for _ in range(2):
        machine = Machine()
        scratch = Scratch(machine, machine.new_page_table())
        scratch.code("mov rcx, 1000\nl: add rax, 1\ndec rcx\njnz l\nsyscall")
        assert machine.run(scratch.context()).kind is ExitKind.SYSCALL
        counts.append(machine.tally())
    assert counts[0] == counts[1]
    assert counts[0].instructions == 1 + 3 * 1000 + 1
    assert counts[0].cycles == 1 + 3 * 1000 + cycles("syscall")


def test_accounting_off_counts_nothing():
    machine = Machine(accounting=False)
    scratch = Scratch(machine, machine.new_page_table())
    scratch.code("nop\nsyscall")
    machine.run(scratch.context())
    machine.charge("sysret")
    assert machine.tally().cycles == 0


def test_charged_events_are_added_and_tallies_subtract():
    machine = Machine()
    before = machine.tally()
    machine.charge("swapgs", 2)
    machine.charge("sysret")
    delta = machine.tally() - before
    assert delta.cycles == 2 * cycles("swapgs") + cycles("sysret")
    assert delta.events == {"swapgs": 2, "sysret": 1}


# -- attribution: every cycle in exactly one category ---------------------------------


def run_hello_attributed() -> Machine:
    elf = build_program("hello", base=0x40_0000)
    image = parse_elf(elf.read_bytes())
    machine = Machine()
    machine.attribute("app", image.segments[0].vaddr, image.end)
    kernel = Kernel(machine)
    kernel.spawn(elf, ["hello"])
    kernel.run()
    return machine


def test_categories_split_the_total_exactly() -> None:
    machine = run_hello_attributed()
    tally = machine.tally()
    assert sum(tally.by_category.values()) == tally.cycles
    assert set(tally.by_category) == {"app", "kernel"}  # guest code, and syscall charges
    assert machine.accounting is not None
    assert tally.by_category["app"] == machine.accounting.block_cycles
    assert tally.by_category["kernel"] == machine.accounting.charged_cycles


def test_attribution_is_deterministic() -> None:
    assert run_hello_attributed().tally() == run_hello_attributed().tally()


def test_ranges_may_not_overlap() -> None:
    machine = Machine()
    machine.attribute("a", 0x1000, 0x3000)
    with pytest.raises(ValueError, match="overlapping"):
        machine.attribute("b", 0x2000, 0x4000)
    with pytest.raises(ValueError, match="bad"):
        machine.attribute("c", 0x5000, 0x5000)


def test_charges_follow_charge_to_and_moves_keep_the_total() -> None:
    machine = Machine()
    machine.attribute("code", 0x1000, 0x2000)
    previous = machine.charge_to("ipc")
    machine.charge("sysret")
    machine.charge_to(previous)
    machine.charge("swapgs")
    machine.reattribute(0x1800, "ipc", 10)  # nothing ran there: "code" may go negative
    tally = machine.tally()
    assert tally.by_category["ipc"] == COSTS["sysret"].cycles + 10
    assert tally.by_category["kernel"] == COSTS["swapgs"].cycles
    assert tally.cycles == COSTS["sysret"].cycles + COSTS["swapgs"].cycles


_EVENTS = ["sysret", "swapgs", "cr3_write", "sel4_fastpath_call", "vm_exit"]
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("to"), st.sampled_from(["kernel", "ipc", "fs"])),
        st.tuples(st.just("one"), st.sampled_from(_EVENTS), st.integers(1, 3)),
        st.tuples(st.just("path"), st.sampled_from(range(3))),
        st.tuples(st.just("in"), st.sampled_from(["ipc", "other"]), st.sampled_from(range(3))),
        st.just(("tally",)),
    ),
    max_size=40,
)
_PATHS = [
    Charges.of("sysret"),
    Charges.of(("swapgs", 2), "sysret", ("cr3_write", 2)),
    Charges.of("sel4_fastpath_call", "cr3_write"),
]


@pytest.mark.parametrize("kind", [Accounting, NativeAccounting])
@settings(max_examples=60, deadline=None)
@given(steps=_STEPS)
def test_charging_a_path_counts_as_charging_each_event(kind, steps):
    """charge_all and charge_in (folded lazily) give the tally of one charge per event."""
    batched, one_by_one = kind(lambda _a, _n: b""), Accounting(lambda _a, _n: b"")
    for step in steps:
        if step[0] == "to":
            assert batched.charge_to(step[1]) == one_by_one.charge_to(step[1])
        elif step[0] == "one":
            batched.charge(step[1], step[2])
            one_by_one.charge(step[1], step[2])
        elif step[0] in ("path", "in"):
            charges = _PATHS[step[-1]]
            previous = one_by_one.charge_to(step[1]) if step[0] == "in" else None
            for event, times in charges.events:
                one_by_one.charge(event, times)
            if previous is not None:
                one_by_one.charge_to(previous)
                batched.charge_in(step[1], charges)
            else:
                batched.charge_all(charges)
        assert batched.cycles == one_by_one.cycles  # the clock never lags
        if step[0] == "tally":
            assert batched.tally() == one_by_one.tally()
    assert batched.tally() == one_by_one.tally()
    batched.reset()
    assert batched.tally() == Tally()


def test_charges_sum_their_rows():
    charges = Charges.of(("swapgs", 2), "sysret")
    assert charges.cycles == 2 * cycles("swapgs") + cycles("sysret")
    assert charges.events == (("swapgs", 2), ("sysret", 1))
