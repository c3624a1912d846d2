"""Reading an instruction's encoding: its fields, its registers, its memory operand.

The forms (forms.py) re-encode an instruction from its fields; this module takes them
apart (prefixes, REX, opcode, ModRM [SIB] [disp], the immediate tail) and says which
registers it touches, so a scratch register can be borrowed around it.

Invariants:
  - _layout returns None for VEX/EVEX encodings and for any instruction whose fields,
    decoded here from the ModRM and SIB, do not add up to capstone's immediate offset;
    no form re-encodes such an instruction.
  - _memory_operand returns None unless the instruction has exactly one memory
    operand with 64-bit (or RIP-relative) addressing; a RIP-relative one is returned as
    its absolute address (base _RIP).
  - _scratch offers at most four registers, never RSP, none the instruction reads or
    writes, and none of r8..r15 when the instruction names AH..BH (no REX allowed).
  - _stack_safe is True only if RSP appears, if at all, as the memory operand's base:
    code around the instruction may then push, and _rebase moves that operand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from capstone import CsInsn
from capstone.x86 import X86_OP_MEM, X86_OP_REG, X86_REG_RIP

from underbridge.bridge.rewrite.encoder import _RIP, _RSP, _Mem
from underbridge.bridge.rewrite.sweep import _MASK64, _Insn

_LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_VEX_ESCAPES = frozenset({0xC4, 0xC5, 0x62})
_GPR_NAMES = (
    ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{n}" for n in range(8, 16))),
    ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", *(f"r{n}d" for n in range(8, 16))),
    ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di", *(f"r{n}w" for n in range(8, 16))),
    ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", *(f"r{n}b" for n in range(8, 16))),
)
#: Register name -> (number, width in bits); "ah".."bh" as (number, 0): high bytes.
_GPR: dict[str, tuple[int, int]] = {
    name: (number, width)
    for names, width in zip(_GPR_NAMES, (64, 32, 16, 8), strict=True)
    for number, name in enumerate(names)
} | {name: (number, 0) for number, name in enumerate(("ah", "ch", "dh", "bh"))}
#: Scratch registers in order of preference (no REX needed first; never RSP).
_SCRATCH = (0, 1, 2, 3, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14, 15)


@dataclass(frozen=True, slots=True)
class _Layout:
    """prefixes | REX | opcode | ModRM [SIB] [disp] | tail (immediates)."""

    prefixes: bytes
    rex: int  # 0: none
    opcode: bytes
    modrm: int | None
    tail_at: int  # where the bytes after ModRM/SIB/disp (or after the opcode) start

    @property
    def w(self) -> int:
        return (self.rex >> 3) & 1

    @property
    def r(self) -> int:
        return (self.rex >> 2) & 1

    @property
    def b(self) -> int:
        return self.rex & 1


def _layout(insn: _Insn) -> _Layout | None:
    """The instruction's fields, or None for VEX/EVEX encodings and anything whose
    fields do not add up. (The ModRM, SIB and displacement are decoded here: capstone's
    disp_size is the operand size under a 66 prefix, not the displacement's.)"""
    cs, raw = insn.cs, insn.raw
    assert cs is not None
    at = 0
    while at < len(raw) and raw[at] in _LEGACY_PREFIXES:
        at += 1
    prefixes = raw[:at]
    rex = 0
    if at < len(raw) and 0x40 <= raw[at] <= 0x4F:
        rex, at = raw[at], at + 1
    if at >= len(raw) or raw[at] in _VEX_ESCAPES:
        return None
    imm_at = cs.imm_offset if cs.imm_size else len(raw)
    if not cs.modrm_offset:
        return _Layout(prefixes, rex, raw[at:imm_at], None, imm_at)
    modrm_at = cs.modrm_offset
    modrm = raw[modrm_at]
    mod, rm = modrm >> 6, modrm & 7
    end = modrm_at + 1
    if mod != 3:
        if rm == 4:
            end += 1
            no_base = mod == 0 and raw[modrm_at + 1] & 7 == 5
        else:
            no_base = mod == 0 and rm == 5  # RIP-relative
        end += 4 if no_base or mod == 2 else mod  # mod 1: disp8; mod 0: none
    if end != imm_at:
        return None
    return _Layout(prefixes, rex, raw[at:modrm_at], modrm, end)


def _gpr(cs: CsInsn, reg_id: int) -> tuple[int, int] | None:
    return _GPR.get(cs.reg_name(reg_id)) if reg_id else None


def _used(cs: CsInsn) -> tuple[set[int], bool]:
    """The general registers an instruction touches (by number), and whether it uses a
    high-byte register (AH..BH: no REX prefix may appear)."""
    read, written = cs.regs_access()
    regs = [r for r in (_gpr(cs, reg) for reg in (*read, *written)) if r is not None]
    return {number for number, _ in regs}, any(width == 0 for _, width in regs)


def _is_rsp(cs: CsInsn, reg_id: int) -> bool:
    register = _gpr(cs, reg_id)
    return register is not None and register[0] == _RSP


def _stack_safe(cs: CsInsn, mem: _Mem | None) -> bool:
    """May code around this instruction push? RSP may appear only as a memory base."""
    read, written = cs.regs_access()
    explicit = [op.reg for op in cs.operands if op.type == X86_OP_REG]
    if any(_is_rsp(cs, r) for r in (*written, *cs.regs_read, *explicit)):
        return False
    return not any(_is_rsp(cs, r) for r in read) or (mem is not None and mem.base == _RSP)


def _memory_operand(insn: _Insn) -> _Mem | None:
    cs = insn.cs
    assert cs is not None
    mems = [op.mem for op in cs.operands if op.type == X86_OP_MEM]
    if len(mems) != 1:
        return None
    mem = mems[0]
    if mem.base == X86_REG_RIP:
        return _Mem(_RIP, None, 1, (insn.end + mem.disp) & _MASK64)
    base, index = _gpr(cs, mem.base), _gpr(cs, mem.index)
    if (mem.base and (base is None or base[1] != 64)) or (
        mem.index and (index is None or index[1] != 64)
    ):
        return None  # 32-bit addressing or a segment-only oddity
    return _Mem(base[0] if base else None, index[0] if index else None, mem.scale or 1, mem.disp)


def _scratch(cs: CsInsn, *, avoid: Iterable[int] = ()) -> list[int]:
    used, high_byte = _used(cs)
    used |= set(avoid)
    return [r for r in _SCRATCH if r not in used and not (high_byte and r >= 8)][:4]


def _rebase(mem: _Mem, pushed: int) -> _Mem:
    """The same operand after `pushed` bytes were pushed (RSP moved down)."""
    if mem.base == _RSP:
        return _Mem(mem.base, mem.index, mem.scale, mem.disp + pushed)
    return mem
