"""The rewriter's hand-written x86-64 encoder (bridge/rewrite/encoder.py), checked by capstone.

Every form the encoder offers is decoded back: the bytes must be exactly one instruction,
with the intended mnemonic and operands. Where the encoding rule is crisp (registers,
immediates, displacements, addressing forms) hypothesis draws the cases; the boundaries
of what the encoder refuses (a rel32 or a displacement out of reach) are checked exactly.
"""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsInsn
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_RIP
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.bridge.rewrite.encoder import (
    _RIP,
    JMP_LEN,
    _branch,
    _encode,
    _fits32,
    _Mem,
    _memory,
    _mov_imm32,
    _NoForm,
    _p32,
    _pop,
    _push,
    _rex,
    _xor_imm32,
)

NAMES64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{n}" for n in range(8, 16)))
NAMES32 = (
    "eax",
    "ecx",
    "edx",
    "ebx",
    "esp",
    "ebp",
    "esi",
    "edi",
    *(f"r{n}d" for n in range(8, 16)),
)
INT32 = (-(1 << 31), (1 << 31) - 1)
MASK64 = (1 << 64) - 1
AT = 0x40_1000

REGS = st.integers(0, 15)
INDEXES = st.one_of(st.none(), st.integers(0, 15).filter(lambda r: r != 4))  # no RSP index
BASES = st.one_of(st.none(), REGS)
SCALES = st.sampled_from((1, 2, 4, 8))
# disp8 or disp32, and their edges (0: no displacement, save for rbp and r13)
EDGES = (0, -1, 1, -128, 127, -129, 128, *INT32)
DISPS = st.one_of(st.integers(*INT32), st.integers(-300, 300), st.sampled_from(EDGES))
ADDRESSES = st.integers(0x1000, (1 << 47) - 0x1000)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)

_CS = Cs(CS_ARCH_X86, CS_MODE_64)
_CS.detail = True


def decode(code: bytes, at: int = AT) -> CsInsn:
    """`code` as exactly one instruction at `at`."""
    insns = list(_CS.disasm(code, at))
    assert len(insns) == 1, f"{code.hex()}: {[(i.mnemonic, i.op_str) for i in insns]}"
    assert insns[0].size == len(code), f"{code.hex()} decodes as {insns[0].size} bytes"
    return insns[0]


def name(insn: CsInsn, reg_id: int) -> str | None:
    return insn.reg_name(reg_id) if reg_id else None


def sign_extend32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >> 31 else value


def rel32_targets(draw: st.DrawFn) -> tuple[int, int]:
    at = draw(ADDRESSES)
    return at, at + JMP_LEN + draw(st.integers(*INT32))


# ---- jmp and call rel32 ----------------------------------------------------------------


@SETTINGS
@given(opcode=st.sampled_from(((0xE9, "jmp"), (0xE8, "call"))), data=st.data())
def test_branch_is_a_rel32_jmp_or_call_to_the_target(opcode, data):
    at, target = rel32_targets(data.draw)
    code = _branch(opcode[0], at, target)
    insn = decode(code, at)
    assert len(code) == JMP_LEN and code[0] == opcode[0]
    assert insn.mnemonic == opcode[1]
    assert [op.imm & MASK64 for op in insn.operands] == [target & MASK64]


@pytest.mark.parametrize("rel", [INT32[0], INT32[1]])
def test_branch_reaches_both_ends_of_rel32(rel):
    target = AT + JMP_LEN + rel
    assert decode(_branch(0xE9, AT, target), AT).operands[0].imm & MASK64 == target & MASK64


@pytest.mark.parametrize("rel", [INT32[0] - 1, INT32[1] + 1, 1 << 40, -(1 << 40)])
def test_branch_refuses_a_target_out_of_rel32_reach(rel):
    target = AT + JMP_LEN + rel
    with pytest.raises(_NoForm, match=f"{target:#x} is out of rel32 reach of {AT:#x}"):
        _branch(0xE9, AT, target)


# ---- push, pop, REX ----------------------------------------------------------------------


@pytest.mark.parametrize("reg", range(16))
def test_push_and_pop_name_the_64_bit_register(reg):
    for encode, mnemonic in ((_push, "push"), (_pop, "pop")):
        code = encode(reg)
        assert len(code) == (2 if reg >= 8 else 1)  # REX.B only for r8..r15
        insn = decode(code)
        assert (insn.mnemonic, insn.op_str) == (mnemonic, NAMES64[reg])


@pytest.mark.parametrize("bits", range(32))
def test_rex_is_0100wrxb_and_absent_when_bare_unless_forced(bits):
    w, r, x, b, force = (bits >> 4) & 1, (bits >> 3) & 1, (bits >> 2) & 1, (bits >> 1) & 1, bits & 1
    value = 0x40 | w << 3 | r << 2 | x << 1 | b
    expected = b"" if value == 0x40 and not force else bytes([value])
    assert _rex(w, r, x, b, force=bool(force)) == expected


# ---- mov and xor with an immediate ---------------------------------------------------------


@SETTINGS
@given(reg=REGS, value=st.integers(0, 0xFFFF_FFFF), wide=st.booleans())
def test_mov_imm32_loads_the_immediate(reg, value, wide):
    insn = decode(_mov_imm32(reg, value, wide=wide))
    dest, imm = insn.operands
    assert insn.mnemonic == "mov" and dest.type == X86_OP_REG and imm.type == X86_OP_IMM
    if wide:  # REX.W C7 /0: the immediate is sign-extended to 64 bits
        assert insn.reg_name(dest.reg) == NAMES64[reg]
        assert imm.imm & MASK64 == sign_extend32(value) & MASK64
    else:  # B8+r: zero-extended by the 32-bit write
        assert insn.reg_name(dest.reg) == NAMES32[reg]
        assert imm.imm & 0xFFFF_FFFF == value


@SETTINGS
@given(reg=REGS, value=st.integers(0, 0xFFFF_FFFF), wide=st.booleans())
def test_xor_imm32_xors_the_immediate(reg, value, wide):
    code = _xor_imm32(reg, value, wide=wide)
    insn = decode(code)
    dest, imm = insn.operands
    assert insn.mnemonic == "xor" and dest.type == X86_OP_REG and imm.type == X86_OP_IMM
    assert insn.reg_name(dest.reg) == (NAMES64 if wide else NAMES32)[reg]
    expected = sign_extend32(value) & MASK64 if wide else value
    assert imm.imm & (MASK64 if wide else 0xFFFF_FFFF) == expected
    assert code[-4:] == _p32(value)  # always the imm32 form (81 /6), never imm8


# ---- ModRM, SIB, displacement ---------------------------------------------------------------


def expected_length(reg: int, mem: _Mem, *, w: int) -> int:
    """REX? + opcode + ModRM + SIB? + disp: the shortest form, with x86's special cases."""
    rex = w or reg >= 8 or (mem.index or 0) >= 8 or (mem.base or 0) >= 8
    sib = mem.base is None or mem.index is not None or mem.base & 7 == 4  # rsp, r12
    if mem.base is None:
        disp = 4
    elif mem.disp == 0 and mem.base & 7 != 5:  # rbp, r13 have no disp-less form
        disp = 0
    else:
        disp = 1 if -128 <= mem.disp < 128 else 4
    return int(bool(rex)) + 1 + 1 + int(sib) + disp


@SETTINGS
@given(reg=REGS, base=BASES, index=INDEXES, scale=SCALES, disp=DISPS)
def test_a_memory_operand_decodes_to_its_base_index_scale_and_displacement(
    reg, base, index, scale, disp
):
    mem = _Mem(base, index, scale if index is not None else 1, disp)
    code = _encode(AT, b"", 1, b"\x8b", reg, mem)  # mov r64, qword ptr [mem]
    assert code is not None
    insn = decode(code)
    dest, src = insn.operands
    assert insn.mnemonic == "mov" and dest.type == X86_OP_REG and src.type == X86_OP_MEM
    assert insn.reg_name(dest.reg) == NAMES64[reg]
    assert name(insn, src.mem.base) == (None if base is None else NAMES64[base])
    assert name(insn, src.mem.index) == (None if index is None else NAMES64[index])
    if index is not None:
        assert src.mem.scale == scale
    assert src.mem.disp == disp
    assert len(code) == expected_length(reg, mem, w=1)


@SETTINGS
@given(reg=REGS, base=BASES, index=INDEXES, scale=SCALES, disp=DISPS)
def test_lea_computes_the_same_operand(reg, base, index, scale, disp):
    # The form the disp split builds: lea s, [base + index*scale + d1].
    mem = _Mem(base, index, scale if index is not None else 1, disp)
    code = _encode(AT, b"", 1, b"\x8d", reg, mem)
    assert code is not None
    insn = decode(code)
    assert insn.mnemonic == "lea"
    assert insn.reg_name(insn.operands[0].reg) == NAMES64[reg]
    assert insn.operands[1].mem.disp == disp


@SETTINGS
@given(reg=REGS, rm=REGS, w=st.integers(0, 1))
def test_a_register_operand_is_modrm_mod_3(reg, rm, w):
    code = _encode(AT, b"", w, b"\x89", reg, rm)  # mov r/m, r
    assert code is not None
    insn = decode(code)
    names = NAMES64 if w else NAMES32
    assert insn.mnemonic == "mov" and code[-1] >> 6 == 3
    assert [insn.reg_name(op.reg) for op in insn.operands] == [names[rm], names[reg]]


@SETTINGS
@given(reg=REGS, data=st.data(), imm=st.integers(0, 0xFFFF_FFFF))
def test_a_rip_relative_operand_is_aimed_from_where_the_instruction_sits(reg, data, imm):
    # cmp qword ptr [rip + rel], imm32: the immediate after the displacement moves the
    # end of the instruction, and rel is taken from that end.
    at, target = rel32_targets(data.draw)
    target -= 7 + 4  # REX.W 81 ModRM disp32 imm32 ends 11 bytes after the start
    code = _encode(at, b"", 1, b"\x81", 7, _Mem(_RIP, None, 1, target), _p32(imm))
    if not _fits32(target - (at + 11)):
        assert code is None
        return
    assert code is not None
    insn = decode(code, at)
    mem, value = insn.operands
    assert insn.mnemonic == "cmp" and mem.mem.base == X86_REG_RIP and not mem.mem.index
    assert (insn.address + insn.size + mem.mem.disp) & MASK64 == target & MASK64
    assert value.imm & MASK64 == sign_extend32(imm) & MASK64


@SETTINGS
@given(base=REGS, disp=DISPS, imm=st.integers(0, 0xFFFF))
def test_prefixes_go_first_and_the_tail_last(base, disp, imm):
    # mov word ptr [base + disp], imm16: operand-size prefix, opcode C7 /0, imm16 tail.
    code = _encode(AT, b"\x66", 0, b"\xc7", 0, _Mem(base, None, 1, disp), imm.to_bytes(2, "little"))
    assert code is not None and code[0] == 0x66
    insn = decode(code)
    mem, value = insn.operands
    assert insn.mnemonic == "mov" and mem.size == 2
    assert insn.reg_name(mem.mem.base) == NAMES64[base] and mem.mem.disp == disp
    assert value.imm & 0xFFFF == imm


@pytest.mark.parametrize("reg", [4, 5, 6, 7])
def test_a_forced_rex_turns_the_high_byte_registers_into_the_low_byte_ones(reg):
    mem = _Mem(3, None, 1, 0x10)  # mov r8, byte ptr [rbx + 0x10]
    plain = decode(_encode(AT, b"", 0, b"\x8a", reg, mem) or b"")
    forced = decode(_encode(AT, b"", 0, b"\x8a", reg, mem, force_rex=True) or b"")
    assert plain.op_str.split(",")[0] == ("ah", "ch", "dh", "bh")[reg - 4]
    assert forced.op_str.split(",")[0] == ("spl", "bpl", "sil", "dil")[reg - 4]


# ---- refusals: what does not fit is refused, never truncated --------------------------------


@pytest.mark.parametrize("disp", [INT32[0] - 1, INT32[1] + 1, 1 << 40])
@pytest.mark.parametrize("base", [None, 0, 4, 5, 12, 13])
def test_a_displacement_past_32_bits_is_refused(base, disp):
    mem = _Mem(base, None, 1, disp)
    assert _memory(0, mem, disp) is None
    assert _encode(AT, b"", 1, b"\x8b", 0, mem) is None


@pytest.mark.parametrize("disp", INT32)
def test_a_displacement_at_the_ends_of_32_bits_is_encoded(disp):
    insn = decode(_encode(AT, b"", 1, b"\x8b", 0, _Mem(3, None, 1, disp)) or b"")
    assert insn.operands[1].mem.disp == disp


@pytest.mark.parametrize("rel", [INT32[0] - 1, INT32[1] + 1])
def test_a_rip_relative_operand_out_of_reach_is_refused(rel):
    # lea rax, [rip + rel] is 7 bytes: the address is rel past its end.
    assert _encode(AT, b"", 1, b"\x8d", 0, _Mem(_RIP, None, 1, AT + 7 + rel)) is None


@pytest.mark.parametrize("rel", INT32)
def test_a_rip_relative_operand_at_the_ends_of_reach_is_encoded(rel):
    code = _encode(AT, b"", 1, b"\x8d", 0, _Mem(_RIP, None, 1, AT + 7 + rel))
    insn = decode(code or b"")
    assert insn.operands[1].mem.base == X86_REG_RIP and insn.operands[1].mem.disp == rel
