"""Gate generation: every value an immediate, every switch checked."""

from __future__ import annotations

from dataclasses import replace

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.bridge.gate import (
    CALLER_SLOT,
    GateSpec,
    assemble_gate,
    gate_source,
    generate,
    wrpkru_offsets,
)

SPEC = GateSpec(
    address=0x6000_3000,
    client_pkru=0x5555_5550,
    server_pkru=0x5555_5545,
    save_area=0x01FF_0000,
    control=0x7000_3000,
    stack_top=0x01FE_0000,
    handler=0x0100_1234,
    badge=3,
    buffer=0x5000_0003_0000,
    current_thread=0x7F00_1000,
)


def instructions(code: bytes):
    return list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, SPEC.address))


def test_every_wrpkru_is_fed_an_immediate_and_checked_after():
    code = generate(SPEC)
    insns = instructions(code)
    offsets = wrpkru_offsets(code)
    assert len(offsets) == 2
    for offset in offsets:
        index = next(i for i, insn in enumerate(insns) if insn.address == SPEC.address + offset)
        assert insns[index - 1].mnemonic == "mov" and insns[index - 1].op_str.startswith("eax, 0x")
        value = insns[index - 1].op_str.split(", ")[1]
        assert insns[index + 1].mnemonic == "cmp" and insns[index + 1].op_str == f"eax, {value}"
        assert insns[index + 1].size == 5  # the fixed-size imm32 form
        assert insns[index + 2].mnemonic == "jne"


def test_no_address_comes_from_a_register_the_caller_controls():
    """Memory operands are absolute or on the server's stack set by the gate itself."""
    for insn in instructions(generate(SPEC)):
        if "[" in insn.op_str:
            operand = insn.op_str[insn.op_str.index("[") + 1 : insn.op_str.index("]")]
            assert operand.startswith("0x") or operand.startswith("rsp"), insn.op_str
    assert "rsp, 0x1fdffd0" in gate_source(SPEC)  # the stack is an immediate too


def test_authentication_comes_first_and_failures_stop():
    insns = instructions(generate(SPEC))
    assert [i.mnemonic for i in insns[:4]] == ["xor", "rdpkru", "cmp", "jne"]
    assert insns[-1].mnemonic == "ud2"


@pytest.mark.parametrize("field", ["address", "save_area", "control", "handler", "current_thread"])
def test_addresses_above_2gib_are_refused(field):
    with pytest.raises(ValueError):
        generate(replace(SPEC, **{field: 0x8000_0000}))


below_2gib = st.integers(0x0100_0000, 0x5EFF_0000)


@settings(max_examples=15, deadline=None)
@given(
    client=st.integers(0, 2**32 - 1),
    server=st.integers(0, 2**32 - 1),
    save=below_2gib.map(lambda v: v & ~7),
    stack=below_2gib.map(lambda v: v & ~15),
    handler=below_2gib,
    badge=st.integers(1, 2**31 - 1),
    slot=st.integers(0, 0xFFF),
    buffer=st.integers(0, 2**30),
)
def test_the_patched_template_is_what_the_assembler_makes(
    client, server, save, stack, handler, badge, slot, buffer
):
    spec = GateSpec(
        address=0x6000_0000 + slot * 4096,
        client_pkru=client,
        server_pkru=server,
        save_area=save,
        control=0x7000_0000 + slot * 4096,
        stack_top=stack,
        handler=handler,
        badge=badge,
        buffer=0x5000_0000_0000 + buffer * 65536,
        current_thread=0x7F00_1000,
    )
    assert generate(spec) == assemble_gate(spec)


def test_instruction_boundaries_do_not_depend_on_pkru_values():
    """A gate is rewritten in place when a party's PKRU changes, possibly while a thread
    is in the handler and will return into it: its layout must not move. 0xfffffff3 is a
    value GNU as would encode as a short imm8 in a plain `cmp eax, imm`."""
    layouts = {
        tuple(
            insn.address
            for insn in instructions(
                generate(replace(SPEC, client_pkru=client, server_pkru=server))
            )
        )
        for client, server in [
            (0x5555_5550, 0x5555_5545),
            (0xFFFF_FFF3, 0xFFFF_FFC3),
            (0, 0xFFFF_FFFF),
            (0x7F, 0x8000_0000),
        ]
    }
    assert len(layouts) == 1


def test_the_return_half_checks_the_thread_recorded_by_the_call_half():
    """After the switch back, the caller slot (client's domain) must hold the current
    thread (the kernel's read-only word); a mismatch stops at ud2."""
    insns = instructions(generate(SPEC))
    second_switch = [i for i, insn in enumerate(insns) if insn.mnemonic == "wrpkru"][1]
    load, compare, branch, clear = insns[second_switch + 3 : second_switch + 7]
    slot = f"qword ptr [{SPEC.save_area + CALLER_SLOT:#x}]"
    assert (load.mnemonic, load.op_str) == ("mov", f"rax, qword ptr [{SPEC.current_thread:#x}]")
    assert (compare.mnemonic, compare.op_str) == ("xor", f"rax, {slot}")
    abort = next(insn.address for insn in insns if insn.mnemonic == "ud2")
    assert branch.mnemonic == "jne" and int(branch.op_str, 16) == abort
    assert (clear.mnemonic, clear.op_str) == ("mov", f"{slot}, rax")  # rax is 0 here
    assert not any(
        insn.op_str.startswith(("eax", "rax"))
        for insn in insns[
            insns.index(clear) + 1 : next(
                i for i, insn in enumerate(insns) if insn.mnemonic == "ret"
            )
        ]
    )  # ...and is the 0 the gate returns


def test_the_call_half_refuses_a_second_call_in_progress_before_saving_anything():
    insns = instructions(generate(SPEC))
    slot = f"qword ptr [{SPEC.save_area + CALLER_SLOT:#x}]"
    check = next(
        i for i, insn in enumerate(insns) if insn.op_str == f"{slot}, 0" and insn.mnemonic == "cmp"
    )
    assert insns[check + 1].mnemonic == "jne"
    assert (insns[check + 2].mnemonic, insns[check + 2].op_str) == ("mov", f"{slot}, rax")
    first_save = next(
        i for i, insn in enumerate(insns) if insn.op_str == f"qword ptr [{SPEC.save_area:#x}], rsp"
    )
    assert check < first_save
