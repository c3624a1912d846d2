"""A hand-written x86-64 encoder: the few instruction forms the trampolines are made of.

Capstone decodes but does not encode, and a form must control every byte it emits (a
forbidden pattern may sit in any field), so these are assembled by hand after the
Intel SDM, vol. 2, chapter 2: [prefixes] [REX] opcode [ModRM [SIB] [disp]] [imm].

  _branch      jmp rel32 (E9) or call rel32 (E8): JMP_LEN bytes
  _push, _pop  push r64 (50+r), pop r64 (58+r); REX.B (41) for r8..r15
  _rex         a REX prefix; none when it would be a bare 40, unless forced
  _mov_imm32   mov r32, imm32 (B8+r), or mov r64, simm32 (REX.W C7 /0)
  _xor_imm32   xor r32/r64, imm32 (81 /6)
  _memory      the ModRM [SIB] [disp] of a memory operand (a _Mem), and its REX.X, REX.B
  _encode      prefixes REX opcode ModRM [SIB] [disp] tail, placed at an address

Invariants:
  - Registers are numbered as the encoding numbers them: 0 rax, 1 rcx, 2 rdx, 3 rbx,
    4 rsp, 5 rbp, 6 rsi, 7 rdi, 8..15 r8..r15. A _Mem's base is such a number, _RIP
    (RIP-relative; its disp is then the absolute address) or None; its index is never
    4 (x86 has no RSP index; no decoded operand has one).
  - Every function's bytes depend on its arguments only. What cannot be encoded is
    refused, never truncated: _branch raises _NoForm for a target out of rel32 reach;
    _memory and _encode return None for a displacement that does not fit 32 signed bits.
  - The shortest form is chosen where there is a choice (no displacement, else disp8,
    else disp32), except that [rbp]/[r13] need a disp8 and [rsp]/[r12] a SIB byte.
  - Nothing here checks for forbidden bytes: that is forms.py's _clean.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

JMP_LEN = 5  # E9 rel32: the patch written over a site
_INT3, _NOP, _PUSHFQ, _POPFQ = 0xCC, 0x90, 0x9C, 0x9D
_SCALE_BITS = {1: 0, 2: 1, 4: 2, 8: 3}
_RSP = 4
_RIP = -1  # _Mem.base for RIP-relative operands


@dataclass(frozen=True, slots=True)
class _Mem:
    base: int | None  # register number, _RIP or None
    index: int | None
    scale: int
    disp: int  # for _RIP: the absolute address


class _NoForm(Exception):
    """No clean equivalent of an instruction at this address (the reason); internal:
    it never escapes the package."""


def _fits32(value: int) -> bool:
    return -(1 << 31) <= value < 1 << 31


def _p32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFF_FFFF)


def _branch(opcode: int, at: int, target: int) -> bytes:
    """A 5-byte jmp (E9) or call (E8) rel32 at `at` to `target`."""
    rel = target - (at + JMP_LEN)
    if not _fits32(rel):
        raise _NoForm(f"{target:#x} is out of rel32 reach of {at:#x}")
    return bytes([opcode]) + _p32(rel)


def _push(reg: int) -> bytes:
    return (b"\x41" if reg >= 8 else b"") + bytes([0x50 + (reg & 7)])


def _pop(reg: int) -> bytes:
    return (b"\x41" if reg >= 8 else b"") + bytes([0x58 + (reg & 7)])


def _rex(w: int, r: int, x: int, b: int, *, force: bool = False) -> bytes:
    value = 0x40 | w << 3 | r << 2 | x << 1 | b
    return bytes([value]) if force or value != 0x40 else b""


def _mov_imm32(reg: int, value: int, *, wide: bool) -> bytes:
    """mov r32, imm32 (B8+r) or mov r64, simm32 (REX.W C7 /0)."""
    if wide:
        return _rex(1, 0, 0, reg >> 3) + bytes([0xC7, 0xC0 | reg & 7]) + _p32(value)
    return _rex(0, 0, 0, reg >> 3) + bytes([0xB8 + (reg & 7)]) + _p32(value)


def _xor_imm32(reg: int, value: int, *, wide: bool) -> bytes:
    return _rex(int(wide), 0, 0, reg >> 3) + bytes([0x81, 0xF0 | reg & 7]) + _p32(value)


def _memory(reg: int, mem: _Mem, disp: int) -> tuple[int, int, bytes] | None:
    """(REX.X, REX.B, ModRM [SIB] [disp]) of `mem` with `disp` and ModRM.reg = reg."""
    if not _fits32(disp):
        return None
    r = (reg & 7) << 3
    if mem.base == _RIP:
        return 0, 0, bytes([r | 5]) + _p32(disp)
    index = 4 if mem.index is None else mem.index & 7
    x = 0 if mem.index is None else mem.index >> 3
    scale = _SCALE_BITS[mem.scale] << 6
    if mem.base is None:
        return x, 0, bytes([r | 4, scale | index << 3 | 5]) + _p32(disp)
    base = mem.base
    if disp == 0 and base & 7 != 5:
        mod, tail = 0, b""
    elif -128 <= disp < 128:
        mod, tail = 1, struct.pack("<b", disp)
    else:
        mod, tail = 2, _p32(disp)
    if mem.index is None and base & 7 != 4:
        return 0, base >> 3, bytes([mod << 6 | r | base & 7]) + tail
    return x, base >> 3, bytes([mod << 6 | r | 4, scale | index << 3 | base & 7]) + tail


def _encode(
    at: int,
    prefixes: bytes,
    w: int,
    opcode: bytes,
    reg: int,
    rm: int | _Mem,
    tail: bytes = b"",
    *,
    force_rex: bool = False,
) -> bytes | None:
    """prefixes REX opcode ModRM(reg, rm) [SIB] [disp] tail, placed at `at`.

    rm: a register number (mod 3) or a memory operand (RIP-relative ones are aimed at
    their absolute address from `at`). None when a displacement does not fit.
    """
    if isinstance(rm, int):
        x, b, body = 0, rm >> 3, bytes([0xC0 | (reg & 7) << 3 | rm & 7])
    else:
        parts = _memory(reg, rm, 0 if rm.base == _RIP else rm.disp)
        if parts is None:
            return None
        x, b, body = parts
    head = prefixes + _rex(w, reg >> 3, x, b, force=force_rex) + opcode
    if isinstance(rm, _Mem) and rm.base == _RIP:
        rel = rm.disp - (at + len(head) + len(body) + len(tail))
        parts = _memory(reg, rm, rel)
        if parts is None:
            return None
        body = parts[2]
    return head + body + tail
