"""Gate generation: every value an immediate, every switch checked."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from underbridge.bridge.gate import GateSpec, gate_source, generate, wrpkru_offsets

SPEC = GateSpec(address=0x6000_3000, client_pkru=0x5555_5550, server_pkru=0x5555_5545,
                save_area=0x01FF_0000, control=0x7000_3000, stack_top=0x01FE_0000,
                handler=0x0100_1234, badge=3, buffer=0x5000_0003_0000)


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


@pytest.mark.parametrize("field", ["address", "save_area", "control", "handler"])
def test_addresses_above_2gib_are_refused(field):
    from dataclasses import replace

    with pytest.raises(ValueError):
        generate(replace(SPEC, **{field: 0x8000_0000}))
