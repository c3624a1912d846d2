"""The rewriting forms: code equivalent to one instruction, without forbidden bytes.

See the package docstring for the list (copied, imm split, imm via scratch, push split,
disp split); each strategy here takes the instruction, the address its form will sit
at and a random generator, and returns (code, label) or None when it does not apply.

Invariants:
  - The code a strategy returns is clean (_clean) and, run in the instruction's place,
    leaves every register, the flags and memory at and above RSP as the instruction
    would (tests/bridge/test_rewrite.py runs each form on the emulated CPU). Registers
    it borrows are pushed below RSP and popped (guests have no red zone); the flags are
    saved around any arithmetic of its own (pushfq/popfq).
  - Random values come only from the caller's generator (seeded by address), so the
    rewritten binary is the same on every run.
  - _clean is stricter than the scanner: a PKRU writer's escape, opcode and ModRM
    count even if its operand bytes would run past the end (the next piece continues it).
"""

from __future__ import annotations

import random
import struct

from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_RIP

from underbridge.bridge.rewrite.encoder import (
    _POPFQ,
    _PUSHFQ,
    _RIP,
    _RSP,
    _encode,
    _fits32,
    _Mem,
    _mov_imm32,
    _p32,
    _pop,
    _push,
    _rex,
    _xor_imm32,
)
from underbridge.bridge.rewrite.layout import (
    _GPR_NAMES,
    _SCRATCH,
    _gpr,
    _layout,
    _memory_operand,
    _rebase,
    _scratch,
    _stack_safe,
)
from underbridge.bridge.rewrite.sweep import _MASK64, _Insn

_TRIES = 48  # random draws per strategy and scratch register
#: `op r/m, imm32` (opcode, ModRM.reg) or accumulator short form -> `op r/m, r` opcode.
_GROUP1_REG_FORM = {0: 0x01, 1: 0x09, 2: 0x11, 3: 0x19, 4: 0x21, 5: 0x29, 6: 0x31, 7: 0x39}
_ACCUMULATOR_REG_FORM = {
    0x05: 0x01,
    0x0D: 0x09,
    0x15: 0x11,
    0x1D: 0x19,
    0x25: 0x21,
    0x2D: 0x29,
    0x35: 0x31,
    0x3D: 0x39,
    0xA9: 0x85,
}


def _dirty_at(code: bytes, index: int) -> bool:
    """Does a PKRU writer's escape, opcode and ModRM start at `index` (the operand may
    run on past the end: stricter than the scanner)?"""
    if index + 2 >= len(code) or code[index] != 0x0F:
        return False
    opcode, modrm = code[index + 1], code[index + 2]
    if opcode == 0x01:
        return modrm == 0xEF
    reg = (modrm >> 3) & 7
    return modrm >> 6 != 3 and ((opcode == 0xAE and reg == 5) or (opcode == 0xC7 and reg == 3))


def _clean(code: bytes) -> bool:
    index = code.find(0x0F)
    while index != -1:
        if _dirty_at(code, index):
            return False
        index = code.find(0x0F, index + 1)
    return True


def _copy(insn: _Insn, at: int) -> bytes | None:
    """The instruction's bytes at `at`, a RIP-relative displacement re-based (None when
    the new displacement does not fit)."""
    cs = insn.cs
    assert cs is not None
    if not any(op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP for op in cs.operands):
        return insn.raw
    at_disp = cs.disp_offset  # RIP-relative: always a disp32
    if struct.unpack("<i", insn.raw[at_disp : at_disp + 4])[0] != cs.disp:
        return None
    rel = insn.end + cs.disp - (at + len(insn.raw))
    if not _fits32(rel):
        return None
    return insn.raw[:at_disp] + _p32(rel) + insn.raw[at_disp + 4 :]


def _imm_split(insn: _Insn, at: int, rng: random.Random) -> tuple[bytes, str] | None:
    """mov r, imm -> pushfq; mov r, a; xor r, b; popfq (imm64: through a scratch)."""
    cs = insn.cs
    assert cs is not None
    ops = cs.operands
    layout = _layout(insn)
    if (
        cs.mnemonic not in ("mov", "movabs")
        or len(ops) != 2
        or layout is None
        or ops[0].type != X86_OP_REG
        or ops[1].type != X86_OP_IMM
    ):
        return None
    dest = _gpr(cs, ops[0].reg)
    if dest is None or dest[0] == _RSP or dest[1] not in (32, 64):
        return None
    reg, wide = dest[0], dest[1] == 64
    imm = ops[1].imm & _MASK64
    for _ in range(_TRIES):
        if cs.imm_size == 8:
            scratch = next(r for r in _SCRATCH if r != reg)
            a = rng.getrandbits(64)
            b = a ^ imm
            code = (
                bytes([_PUSHFQ])
                + _push(scratch)
                + _rex(1, 0, 0, scratch >> 3)
                + bytes([0xB8 + (scratch & 7)])
                + struct.pack("<Q", b)
                + _rex(1, 0, 0, reg >> 3)
                + bytes([0xB8 + (reg & 7)])
                + struct.pack("<Q", a)
                + _rex(1, scratch >> 3, 0, reg >> 3)
                + bytes([0x31, 0xC0 | (scratch & 7) << 3 | reg & 7])
                + _pop(scratch)
                + bytes([_POPFQ])
            )
        else:
            a = rng.getrandbits(32)
            b = a ^ (imm & 0xFFFF_FFFF)
            code = (
                bytes([_PUSHFQ])
                + _mov_imm32(reg, a, wide=wide)
                + _xor_imm32(reg, b, wide=wide)
                + bytes([_POPFQ])
            )
        if _clean(code):
            return code, "imm split (pushfq; mov; xor; popfq)"
    return None


def _push_split(insn: _Insn, at: int, rng: random.Random) -> tuple[bytes, str] | None:
    """push imm32 -> push a; pushfq; xor qword [rsp + 8], b; popfq."""
    if insn.raw[:1] != b"\x68" or len(insn.raw) != 5:
        return None
    imm = struct.unpack("<I", insn.raw[1:])[0]
    for _ in range(_TRIES):
        a = rng.getrandbits(32)
        code = (
            b"\x68"
            + _p32(a)
            + bytes([_PUSHFQ])
            + b"\x48\x81\x74\x24\x08"
            + _p32(a ^ imm)
            + bytes([_POPFQ])
        )
        if _clean(code):
            return code, "push split (push; pushfq; xor [rsp+8]; popfq)"
    return None


def _imm_via_scratch(insn: _Insn, at: int, rng: random.Random) -> tuple[bytes, str] | None:
    """op r/m, imm32 -> push s; pushfq; mov s, a; xor s, b; popfq; op r/m, s; pop s."""
    cs = insn.cs
    assert cs is not None
    layout = _layout(insn)
    if layout is None or cs.imm_size != 4 or len(layout.opcode) != 1:
        return None
    opcode = layout.opcode[0]
    rm: int | _Mem
    if layout.modrm is None:
        if opcode not in _ACCUMULATOR_REG_FORM:
            return None
        new_opcode, rm = _ACCUMULATOR_REG_FORM[opcode], 0
    else:
        ext = (layout.modrm >> 3) & 7
        new_opcode = {
            0x81: _GROUP1_REG_FORM.get(ext),
            0xC7: 0x89 if ext == 0 else None,
            0xF7: 0x85 if ext == 0 else None,
        }.get(opcode)
        if new_opcode is None:
            return None
        if layout.modrm >> 6 == 3:
            rm = layout.b << 3 | layout.modrm & 7
        else:
            mem = _memory_operand(insn)
            if mem is None:
                return None
            rm = _rebase(mem, 8)
    if len(insn.raw) - layout.tail_at != 4:
        return None
    mem_operand = rm if isinstance(rm, _Mem) else None
    if not _stack_safe(cs, mem_operand):
        return None
    wide = bool(layout.w)
    imm = struct.unpack("<I", insn.raw[-4:])[0]
    for scratch in _scratch(cs):
        for _ in range(_TRIES // 4):
            a = rng.getrandbits(32)
            head = (
                _push(scratch)
                + bytes([_PUSHFQ])
                + _mov_imm32(scratch, a, wide=wide)
                + _xor_imm32(scratch, a ^ imm, wide=wide)
                + bytes([_POPFQ])
            )
            op = _encode(
                at + len(head),
                layout.prefixes,
                layout.w,
                bytes([new_opcode]),
                scratch,
                rm,
                force_rex=bool(layout.rex),
            )
            if op is None:
                return None
            code = head + op + _pop(scratch)
            if _clean(code):
                return code, f"imm via scratch {_GPR_NAMES[0][scratch]}"
    return None


def _disp_split(insn: _Insn, at: int, rng: random.Random) -> tuple[bytes, str] | None:
    """op [base + index*scale + disp] -> push s; lea s, [base + index*scale + d1];
    op [s + d2]; pop s, with d1 + d2 == disp."""
    cs = insn.cs
    assert cs is not None
    layout = _layout(insn)
    mem = _memory_operand(insn)
    if (
        layout is None
        or layout.modrm is None
        or layout.modrm >> 6 == 3
        or mem is None
        or 0x67 in layout.prefixes
        or not _stack_safe(cs, mem)
    ):
        return None
    tail = insn.raw[layout.tail_at :]
    reg = layout.r << 3 | (layout.modrm >> 3) & 7
    mem = _rebase(mem, 8)
    avoid = [] if mem.base in (None, _RIP) else [mem.base]
    for scratch in _scratch(cs, avoid=avoid):
        for _ in range(_TRIES // 4):
            d2 = rng.randrange(-(1 << 31), 1 << 31)
            if mem.base == _RIP:
                lea_mem = _Mem(_RIP, None, 1, mem.disp - d2)
            else:
                d1 = mem.disp - d2
                if not _fits32(d1):
                    continue
                lea_mem = _Mem(mem.base, mem.index, mem.scale, d1)
            head = _push(scratch)
            lea = _encode(at + len(head), b"", 1, b"\x8d", scratch, lea_mem)
            if lea is None:
                continue
            head += lea
            op = _encode(
                at + len(head),
                layout.prefixes,
                layout.w,
                layout.opcode,
                reg,
                _Mem(scratch, None, 1, d2),
                tail,
                force_rex=bool(layout.rex),
            )
            if op is None:
                continue
            code = head + op + _pop(scratch)
            if _clean(code):
                return code, f"disp split via lea into scratch {_GPR_NAMES[0][scratch]}"
    return None
