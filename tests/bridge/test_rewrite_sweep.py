"""The rewriter's sweep reads capstone's plain text, not its detailed decoding.

Decoding every instruction in detail made the rewriter about 100 times slower than the
scanner's sweep (issue 10: 400 s for 8 MiB of code). The rewriter now takes each
instruction's flow and direct target from its mnemonic and operand text, and decodes in
detail only the instructions whose text may name an address in code. These tests check
both shortcuts against capstone's detailed decoding: the flow over every one-, two- and
three-byte opcode under the common prefixes, the addresses over crafted instructions,
random bytes and the project's programs.
"""

from __future__ import annotations

import random
import re

import pytest
from capstone import CS_ARCH_X86, CS_GRP_RET, CS_MODE_64, Cs, CsInsn
from capstone.x86 import X86_OP_IMM

from underbridge.bridge.rewrite.emit import _Program
from underbridge.bridge.rewrite.sweep import (
    _BRANCH_GROUPS,
    _BRANCHES,
    _MASK64,
    _aligned_words,
    _flow,
)
from underbridge.bridge.scan import scan_image
from underbridge.elf.image import parse_elf
from underbridge.guestbuild import toolchain
from underbridge.guestbuild.asm import assemble

from .test_rewrite import make_elf

PREFIXES = (
    b"",
    b"\x66",
    b"\x67",
    b"\xf2",
    b"\xf3",
    b"\x3e",
    b"\x48",
    b"\x41",
    b"\x66\x48",
    b"\xf2\x48",
    b"\xf3\x48",
    b"\xf2\x3e",
)
OPCODES = (
    [bytes([a]) for a in range(256) if a != 0x0F]
    + [bytes([0x0F, a]) for a in range(256)]
    + [bytes([0x0F, 0x38, a]) for a in range(256)]
    + [bytes([0x0F, 0x3A, a]) for a in range(256)]
)
# Every ModRM.reg (opcode extensions) with a memory and a register operand, and SIB forms.
MODRMS = (0x04, 0x05, 0x44, 0x84, *range(0x00, 0x40, 8), *range(0xC0, 0x100, 8))
TAIL = bytes(range(0x24, 0x2D))  # SIB, displacement, immediate bytes
AT = 0x40_1000


def reference_flow(cs: CsInsn) -> tuple[str, int | None]:
    """Flow and target from capstone's groups and operands (what the rewriter used to do)."""
    groups = set(cs.groups)
    if not groups & _BRANCH_GROUPS:
        return "next", None
    immediates = [op.imm & _MASK64 for op in cs.operands if op.type == X86_OP_IMM]
    target = immediates[0] if immediates and CS_GRP_RET not in groups else None
    return ("exit" if cs.mnemonic in ("jmp", "ret") else "branch"), target


def opcode_samples() -> dict[object, bytes]:
    """One instruction per mnemonic, and per operand shape for the branches."""
    plain = Cs(CS_ARCH_X86, CS_MODE_64)
    samples: dict[object, bytes] = {}
    for prefix in PREFIXES:
        for opcode in OPCODES:
            for modrm in MODRMS:
                code = prefix + opcode + bytes([modrm]) + TAIL
                for _, size, mnemonic, op_str in plain.disasm_lite(code, AT, 1):
                    shape = re.sub(r"0x[0-9a-f]+|\d+", "N", op_str)
                    branchy = mnemonic.rsplit(" ", 1)[-1] in _BRANCHES
                    samples.setdefault((mnemonic, shape) if branchy else mnemonic, code[:size])
    return samples


def test_flow_from_text_is_capstones_for_every_opcode():
    detailed = Cs(CS_ARCH_X86, CS_MODE_64)
    detailed.detail = True
    samples = opcode_samples()
    assert len(samples) > 600  # the whole opcode map, not a corner of it
    branches = 0
    for code in samples.values():
        cs = next(detailed.disasm(code, AT, 1))
        expected = reference_flow(cs)
        assert _flow(cs.mnemonic, cs.op_str) == expected, f"{code.hex()}: {cs.mnemonic} {cs.op_str}"
        branches += expected[0] != "next"
    assert branches >= 60  # jmp, jcc, call, ret, loop... under bnd/notrack/rep


# ---- addresses in code ---------------------------------------------------------------

CODE_AT = 0x40_0000
NAMING = """
lea rax, [rip + 0x100]
lea rbx, [rip - 0x10]
lea rcx, [rip]
mov rax, qword ptr [rip + 0x200]
mov dword ptr [rip + 0x300], 0x400010
cmp byte ptr [rip - 0x8], 1
jmp qword ptr [rip + 0x40]
call qword ptr [0x400020]
mov eax, 0x400030
mov rax, 0x400040
movabs rax, 0x400050
push 0x400060
cmp rbx, 0x400070
mov rax, qword ptr [0x400080]
mov al, byte ptr fs:[0x400090]
mov rax, qword ptr [rbx + 0x4000a0]
lea rax, [rip + 0x7fffffff]
lea rax, [rip - 0x7fffffff]
mov eax, 0x10000000
mov rax, qword ptr [rip + 0x10000000]
jmp 0x400000
call 0x400100
jne 0x400000
ret
"""


def programs() -> list[tuple[str, bytes]]:
    crafted = assemble(NAMING, origin=CODE_AT) + bytes(0x400)
    noise = random.Random(10).randbytes(96 * 1024)
    ours = [
        (name, toolchain.build_program(name, base=0x0100_0000).read_bytes())
        for name in ("echo", "fs", "iodriver")
    ]
    return [("crafted", make_elf(CODE_AT, crafted)), ("random", make_elf(0x1_0000, noise)), *ours]


def reference_targets(program: _Program) -> tuple[set[int], set[int]]:
    """Every instruction decoded in detail, as the rewriter used to collect them."""
    targets, refs = {program.image.entry}, set()
    for sweep in program.sweeps:
        for index in range(len(sweep)):
            insn = sweep[index]
            if insn.flow == "data":
                continue
            _, target = reference_flow(insn.cs)
            if target is not None:
                targets.add(target)
            program._operand_addresses(insn, targets, refs)
    targets.update(a for a in program._symbols() if program.in_code(a))
    for segment in program.image.segments:
        if not segment.executable:
            targets.update(
                a for a in _aligned_words(segment.vaddr, segment.data) if program.in_code(a)
            )
    return targets, refs


@pytest.mark.parametrize(("name", "data"), [pytest.param(*p, id=p[0]) for p in programs()])
def test_addresses_in_code_are_the_detailed_decodings(name, data):
    image = parse_elf(data, name=name)
    _, swept = scan_image(image, name)
    program = _Program(name, data, image, None, swept)
    targets, refs = program._collect_targets()
    expected_targets, expected_refs = reference_targets(program)
    assert refs == expected_refs
    assert targets == expected_targets
    if name == "crafted":  # the crafted forms do name code: the comparison has teeth
        assert {0x400010, 0x400030, 0x400050, 0x400060, 0x400070} <= targets
        assert 0x400020 in refs and 0x400080 in refs and 0x400090 in refs
