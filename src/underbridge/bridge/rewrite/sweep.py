"""The code as the rewriter sees it: the scanner's sweep, and where control may arrive.

The instructions are the scanner's linear sweep of each executable CodeRegion
(bridge/scan.py, capstone, one undecodable byte at a time as `.byte`), shared with it:
the rewriter works on exactly the instructions the scanner judged. _Sweep turns them
into _Insn objects on first access; _Swept holds a program's sweeps and collects every
address control may arrive at, which planning (plan.py) must not cut through.

Invariants:
  - _Insn.flow and .target come from capstone's text (_flow) and equal what its
    detailed decoding says: "data" (an undecodable byte), "next" (falls through),
    "exit" (ret or jmp), "branch" (any other transfer); target: a direct branch's.
    (tests/bridge/test_rewrite_sweep.py checks it over every one- to three-byte opcode.)
  - _Insn.offset is a file offset only if every byte of the instruction lies in the
    file bytes of one segment; otherwise None, and the instruction cannot be patched.
  - _Insn.cs, capstone's detailed decoding (about 100 times the sweep's cost), is made
    only on first use.
  - _Swept's targets hold every address it can see control arrive at: the entry point,
    direct jmp/jcc/call/loop targets, symbols, immediates and RIP-relative `lea` results
    pointing into code, and every aligned 4- and 8-byte word in non-executable segments
    pointing into code; refs, the addresses in code the program reads as data. An
    instruction whose operand may be an address in code is always decoded in detail
    (_may_name_code says False only when it cannot be).
"""

from __future__ import annotations

import io
import re
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import overload

from capstone import (
    CS_ARCH_X86,
    CS_GRP_BRANCH_RELATIVE,
    CS_GRP_CALL,
    CS_GRP_IRET,
    CS_GRP_JUMP,
    CS_GRP_RET,
    CS_MODE_64,
    Cs,
    CsInsn,
)
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_REG_RIP
from elftools.elf.elffile import ELFFile

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite.results import RewriteRefused
from underbridge.bridge.scan import CodeRegion, Instruction
from underbridge.elf.image import ElfImage

_MASK64 = (1 << 64) - 1
_PORT_IO = frozenset({"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"})
_BRANCH_GROUPS = frozenset(
    {CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_IRET, CS_GRP_BRANCH_RELATIVE}
)
#: The mnemonics capstone puts in _BRANCH_GROUPS (see _flow), the returns among them.
_RETURNS = frozenset({"ret", "retf", "retfq"})
_BRANCHES = _RETURNS | frozenset(
    {
        "jmp",
        "ljmp",
        "call",
        "lcall",
        "jrcxz",
        "jecxz",
        "loop",
        "loope",
        "loopne",
        "iret",
        "iretd",
        "iretq",
        "sysret",
        "sysretq",
        "sysexit",
        "sysexitq",
        "xbegin",
        *(
            f"j{cc}"
            for cc in (
                "a",
                "ae",
                "b",
                "be",
                "e",
                "g",
                "ge",
                "l",
                "le",
                "ne",
                "no",
                "np",
                "ns",
                "o",
                "p",
                "s",
            )
        ),
    }
)
_NUMBER = re.compile(r"0x[0-9a-f]+|[0-9]+")
_HEX = re.compile(r"0x[0-9a-f]+")
_RIP_RELATIVE = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|[0-9]+)\]")


class _Insn:
    """One instruction of the sweep. flow: "data" (undecodable byte), "next" (falls
    through), "exit" (ret or jmp: ends a straight-line run), "branch" (anything else
    that transfers control).

    `cs`, capstone's detailed decoding, is made on first use: decoding every instruction
    in detail costs about 100 times the plain sweep, and only branches, instructions
    that name an address in code and the instructions of sites need it.
    """

    __slots__ = ("_cs", "flow", "mnemonic", "offset", "op_str", "raw", "target", "vaddr")

    def __init__(
        self,
        vaddr: int,
        raw: bytes,
        mnemonic: str,
        op_str: str,
        offset: int | None,
        flow: str,
        target: int | None,
    ) -> None:
        self.vaddr, self.raw, self.mnemonic, self.op_str = vaddr, raw, mnemonic, op_str
        self.offset = offset  # file offset, if every byte is in one segment's file bytes
        self.flow, self.target = flow, target  # target: a direct branch's
        self._cs: CsInsn | None = None

    @property
    def cs(self) -> CsInsn | None:
        """Capstone's detailed decoding; None for an undecodable byte."""
        if self._cs is None and self.flow != "data":
            self._cs = _detailed(self.raw, self.vaddr)
        return self._cs

    @property
    def end(self) -> int:
        return self.vaddr + len(self.raw)

    def __str__(self) -> str:
        if self.flow == "data":
            return f"{self.vaddr:#x}: .byte {self.raw[0]:#04x}"
        return f"{self.vaddr:#x}: {self.mnemonic} {self.op_str}".rstrip()


_DETAIL = Cs(CS_ARCH_X86, CS_MODE_64)
_DETAIL.detail = True


def _detailed(raw: bytes, vaddr: int) -> CsInsn:
    """One instruction decoded in detail (as the sweep decoded it: x86 decoding depends
    on the bytes and the address only)."""
    return next(_DETAIL.disasm(raw, vaddr, 1))


class _Sweep:
    """A region's linear sweep (the scanner's, bridge/scan.py) as _Insn objects, each
    made on first access: planning looks at the instructions around the sites only."""

    def __init__(self, region: CodeRegion, lite: list[Instruction]) -> None:
        self.region, self.lite = region, lite
        self.piece_starts = [start for start, _, _ in region.pieces]
        self.made: dict[int, _Insn] = {}

    def __len__(self) -> int:
        return len(self.lite)

    @overload
    def __getitem__(self, index: int) -> _Insn: ...
    @overload
    def __getitem__(self, index: slice) -> list[_Insn]: ...

    def __getitem__(self, index: int | slice) -> _Insn | list[_Insn]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.lite)))]
        if index < 0:
            raise IndexError(index)  # callers check their bounds; no wrapping around
        insn = self.made.get(index)
        if insn is None:
            insn = self.made[index] = self._make(self.lite[index])
        return insn

    def _make(self, lite: Instruction) -> _Insn:
        region = self.region
        at = lite.vaddr - region.vaddr
        raw = region.code[at : at + lite.size]
        offset = _file_offset(region, self.piece_starts, lite.vaddr, lite.size)
        flow, target = (
            ("data", None) if lite.mnemonic == ".byte" else _flow(lite.mnemonic, lite.op_str)
        )  # .byte: capstone's skipdata, an undecodable byte
        return _Insn(lite.vaddr, raw, lite.mnemonic, lite.op_str, offset, flow, target)


def _flow(mnemonic: str, op_str: str) -> tuple[str, int | None]:
    """An instruction's flow and direct target, from its text. The same as from
    capstone's detail: its branch groups (_BRANCH_GROUPS) hold exactly the mnemonics
    of _BRANCHES (after a bnd/notrack/repz word); the target is the immediate operand,
    which capstone prints alone, for all but the returns.
    (tests/bridge/test_rewrite.py checks both over every one- and two-byte opcode.)"""
    if mnemonic.rsplit(" ", 1)[-1] not in _BRANCHES:
        return "next", None
    target = None
    if mnemonic.rsplit(" ", 1)[-1] not in _RETURNS and _NUMBER.fullmatch(op_str):
        target = int(op_str, 16 if op_str.startswith("0x") else 10) & _MASK64
    return ("exit" if mnemonic in ("jmp", "ret") else "branch"), target


def _file_offset(region: CodeRegion, starts: list[int], vaddr: int, length: int) -> int | None:
    index = bisect_right(starts, vaddr) - 1
    if index < 0:
        return None
    start, size, offset = region.pieces[index]
    return offset + vaddr - start if vaddr + length <= start + size else None


class _Swept:
    """A program's sweeps, its identity (for refusals) and where control may arrive.
    The first layer of _Program (emit.py); _Planner (plan.py) builds on it."""

    def __init__(
        self,
        name: str,
        data: bytes,
        image: ElfImage,
        io_routines: IoRoutines | None,
        swept: list[tuple[CodeRegion, list[Instruction]]],
    ) -> None:
        self.name, self.data, self.image, self.io = name, data, image, io_routines
        self.regions = [region for region, _ in swept]
        self.sweeps = [_Sweep(region, lite) for region, lite in swept]
        self.starts = [[insn.vaddr for insn in lite] for _, lite in swept]
        self.ranges = [(r.vaddr, r.vaddr + len(r.code)) for r in self.regions]
        self.range_starts = [low for low, _ in self.ranges]
        self.targets: set[int] = set()  # collected by plan()
        self.sorted_targets: list[int] = []
        self.sorted_refs: list[int] = []

    def refuse(self, problem: str, hint: str = "") -> RewriteRefused:
        return RewriteRefused(
            f"{self.name}: {problem}",
            hint=hint or "run it in user space, or change the source so the bytes vanish",
        )

    # -- where control may arrive -----------------------------------------------------

    def in_code(self, address: int) -> bool:
        index = bisect_right(self.range_starts, address) - 1
        return index >= 0 and address < self.ranges[index][1]

    def _collect_targets(self) -> tuple[set[int], set[int]]:
        targets, refs = {self.image.entry}, set()
        for sweep in self.sweeps:
            for index, lite in enumerate(sweep.lite):
                if lite.mnemonic == ".byte":
                    continue
                _, target = _flow(lite.mnemonic, lite.op_str)
                if target is not None:  # a direct branch: the target is its only operand
                    targets.add(target)
                elif self._may_name_code(lite):
                    self._operand_addresses(sweep[index], targets, refs)
        targets.update(a for a in self._symbols() if self.in_code(a))
        for segment in self.image.segments:
            if not segment.executable:
                targets.update(
                    a for a in _aligned_words(segment.vaddr, segment.data) if self.in_code(a)
                )
        return targets, refs

    def _may_name_code(self, lite: Instruction) -> bool:
        """Can an operand of this instruction be an address in code? False only when it
        cannot: capstone prints every immediate and displacement above 9 in hex, so an
        absolute address in code (at least MIN_VADDR) appears in op_str as one, and a
        RIP-relative operand as `[rip + disp]` or `[rip - disp]`. (Saves the detailed
        decoding of all other instructions.)"""
        if "rip" in lite.op_str:
            relative = _RIP_RELATIVE.search(lite.op_str)
            if relative is None:
                return True  # not the usual form: let the detailed decoding tell
            disp = int(relative.group(2), 16 if relative.group(2).startswith("0x") else 10)
            if self.in_code((lite.end + (disp if relative.group(1) == "+" else -disp)) & _MASK64):
                return True
        return any(self.in_code(int(number, 16)) for number in _HEX.findall(lite.op_str))

    def _operand_addresses(self, insn: _Insn, targets: set[int], refs: set[int]) -> None:
        assert insn.cs is not None
        for op in insn.cs.operands:
            if op.type == X86_OP_IMM and self.in_code(op.imm & _MASK64):
                targets.add(op.imm & _MASK64)
            elif op.type == X86_OP_MEM:
                if op.mem.base == X86_REG_RIP:
                    address = (insn.end + op.mem.disp) & _MASK64
                elif not op.mem.base and not op.mem.index:
                    address = op.mem.disp & _MASK64
                else:
                    continue
                if self.in_code(address):
                    (targets if insn.cs.mnemonic == "lea" else refs).add(address)

    def _symbols(self) -> list[int]:
        try:
            symtab = ELFFile(io.BytesIO(self.data)).get_section_by_name(".symtab")
            return [] if symtab is None else [s["st_value"] for s in symtab.iter_symbols()]
        except Exception:  # section headers are optional; pyelftools raises a zoo
            return []

    def target_inside(self, start: int, end: int) -> int | None:
        """A possible jump target strictly inside [start, end), if any."""
        index = bisect_right(self.sorted_targets, start)
        if index < len(self.sorted_targets) and self.sorted_targets[index] < end:
            return self.sorted_targets[index]
        return None

    def data_ref_in(self, start: int, end: int) -> int | None:
        index = bisect_left(self.sorted_refs, start)
        if index < len(self.sorted_refs) and self.sorted_refs[index] < end:
            return self.sorted_refs[index]
        return None


def _aligned_words(vaddr: int, data: bytes) -> Iterable[int]:
    for size, fmt in ((4, "<I"), (8, "<Q")):
        skip = -vaddr % size
        usable = (len(data) - skip) // size * size if len(data) > skip else 0
        yield from (value for (value,) in struct.iter_unpack(fmt, data[skip : skip + usable]))
