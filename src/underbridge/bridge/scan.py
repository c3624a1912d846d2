"""The binary scanner of privilege deprivation: can this code change PKRU by itself?

Rule 7 of domain.py: a PKRU changes only by a gate's checked `wrpkru` or by the kernel.
The hardware does not enforce that: any ring-0 code (and `wrpkru` also in ring 3) can
write PKRU with `wrpkru`, or with XRSTOR/XRSTORS, which reload PKRU from an XSAVE area
in memory when XCR0 enables the PKRU state. So a server binary is vetted before it is
loaded: it must contain none of them, anywhere a jump could land. x86 instructions have
variable length and a jump may target any byte, so the bytes `0F 01 EF` inside another
instruction's immediate or displacement, spanning two instructions, or in data placed in
an executable section are as good a `wrpkru` as an aligned one (ERIM, Vahldiek-
Oberwagner et al., USENIX Security 2019, section 4.3).

WHAT IS SEARCHED, and where (Intel SDM vol. 2 encodings):
  - The executable memory the loader maps (kernel/loader.py): every executable PT_LOAD
    of a static x86-64 ELF that `parse_elf` accepts, followed by the zeros the loader
    puts up to the end of its last page. Executable segments on adjacent pages form one
    region, so an occurrence that spans them is found too.
  - At EVERY byte offset (hidden or not), anchored at the 0F escape byte:
      wrpkru   0F 01 EF
      xrstor   0F AE /5 with a memory operand (ModRM.mod != 3; with REX.W: XRSTOR64).
               0F AE /5 with mod == 3 (0F AE E8..EF) is LFENCE and is not reported.
      xrstors  0F C7 /3 with a memory operand (with REX.W: XRSTORS64).
    Prefixes are optional: a jump can land on the 0F and skip them. An occurrence whose
    ModRM/SIB/displacement bytes would run past the region is not reported: fetching
    them faults, so it cannot execute.
  - At instruction starts of the linear sweep only: the privileged instructions in
    machine/privileged_insns.py (and mov to or from a control or debug register). They
    are listed for the reader; the secure monitor traps them at run time wherever they
    sit. Their short encodings (hlt F4, cli FA, out EE...) occur inside almost any code,
    so hidden ones are not reported.

VMFUNC (0F 01 D4), SkyBridge's address-space switch, is searched the same way, at every
byte offset, by `vmfunc_sites` (kernel/ipc/skybridge.py refuses to bind a client or
server whose executable pages hold one outside the kernel's trampolines); it changes no
PKRU, so it is not one of this report's findings.

The linear sweep is capstone's disassembly of each region from its first byte, skipping
one undecodable byte at a time (shown as `.byte`). Both searches take time linear in the
region's size; `scan_image` hands the sweep on to the rewriter (bridge/rewrite/).

A Finding:
  offset, vaddr  file offset and virtual address of its first byte;
  encoding       its bytes (the JSON key is "bytes"); class is `kind` ("class" in JSON):
                 "wrpkru", "xrstor", "xrstors" or "privileged:<mnemonic>" (for mov to or
                 from CRn/DRn: "privileged:mov-cr3", "privileged:mov-dr7", ...);
  aligned        a wrpkru/xrstor occurrence is aligned when the sweep decodes it as that
                 instruction, starting at its 0F or at prefix bytes right before it (then
                 the finding is the whole instruction, prefixes included). Otherwise it
                 is hidden: it starts at the 0F, its bytes are the occurrence's;
  overlaps       the decoded instructions its bytes overlap (for an aligned one, itself).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from underbridge.elf.image import PAGE_SIZE, ElfImage, Segment, parse_elf
from underbridge.errors import ElfError
from underbridge.machine.privileged_insns import privileged_name

WRPKRU = b"\x0f\x01\xef"
VMFUNC = b"\x0f\x01\xd4"
#: The instructions that write PKRU, as capstone names their aligned forms, by class.
PKRU_CLASSES: dict[str, frozenset[str]] = {
    "wrpkru": frozenset({"wrpkru"}),
    "xrstor": frozenset({"xrstor", "xrstor64"}),
    "xrstors": frozenset({"xrstors", "xrstors64"}),
}
#: 0F <opcode> with ModRM.reg == <reg> and a memory operand.
_MEMORY_FORMS: dict[tuple[int, int], str] = {(0xAE, 5): "xrstor", (0xC7, 3): "xrstors"}
_LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_PREFIXES = _LEGACY_PREFIXES | frozenset(range(0x40, 0x50))  # and REX
#: Where a PKRU writer may start: 0F 01, 0F AE, 0F C7 (a candidate's second byte is no
#: 0F, so no candidate hides inside another one).
_ESCAPES = re.compile(rb"\x0f[\x01\xae\xc7]")


# ---- results -----------------------------------------------------------------------


class Instruction(NamedTuple):
    """One instruction of the linear sweep (a tuple: a sweep makes one per instruction)."""

    vaddr: int
    size: int
    mnemonic: str
    op_str: str

    @property
    def end(self) -> int:
        return self.vaddr + self.size

    def __str__(self) -> str:
        return f"{self.vaddr:#x}: {self.mnemonic} {self.op_str}".rstrip()


@dataclass(frozen=True, slots=True)
class Finding:
    """One occurrence (see the module docstring for each field)."""

    offset: int
    vaddr: int
    encoding: bytes
    kind: str
    aligned: bool
    overlaps: tuple[Instruction, ...]

    @property
    def writes_pkru(self) -> bool:
        """A wrpkru/xrstor/xrstors occurrence (not a listed privileged instruction)."""
        return self.kind in PKRU_CLASSES

    @property
    def escape_vaddr(self) -> int:
        """Address of a PKRU writer's 0F escape byte (after any prefixes); else vaddr."""
        return self.vaddr + self.encoding.index(0x0F) if self.writes_pkru else self.vaddr

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "vaddr": self.vaddr,
            "bytes": self.encoding.hex(" "),
            "class": self.kind,
            "aligned": self.aligned,
            "overlaps": [str(insn) for insn in self.overlaps],
        }


@dataclass(frozen=True, slots=True)
class ScanReport:
    """Every finding in one file, by address."""

    file: str
    findings: tuple[Finding, ...]

    @property
    def pkru_writers(self) -> tuple[Finding, ...]:
        """The wrpkru/xrstor/xrstors occurrences: a server must have none."""
        return tuple(f for f in self.findings if f.writes_pkru)

    @property
    def privileged(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.writes_pkru)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "findings": [f.to_dict() for f in self.findings]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ---- entry points ------------------------------------------------------------------


def scan_elf(source: Path | str | bytes, *, name: str | None = None) -> ScanReport:
    """Scan the executable segments of a static x86-64 ELF (a path or its bytes).

    Raises ElfError for an unreadable file or one the loader would refuse.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = bytes(source), name or "<bytes>"
    else:
        data, label = _read(Path(source)), name or str(source)
    return scan_image(parse_elf(data, name=label), label)[0]


def scan_image(
    image: ElfImage, label: str
) -> tuple[ScanReport, list[tuple[CodeRegion, list[Instruction]]]]:
    """The report on a parsed image, and each executable region with its linear sweep
    (for the rewriter, bridge/rewrite/, which works on the same sweep)."""
    swept = [(region, _sweep(region.code, region.vaddr)) for region in code_regions(image.segments)]
    findings = [f for region, sweep in swept for f in _scan_region(region, sweep)]
    return ScanReport(file=label, findings=tuple(findings)), swept


def scan_code(code: bytes, *, vaddr: int = 0, file_offset: int = 0) -> list[Finding]:
    """Scan raw machine code mapped at `vaddr` (e.g. a generated gate)."""
    region = CodeRegion(vaddr, bytes(code), ((vaddr, len(code), file_offset),))
    return _scan_region(region, _sweep(region.code, vaddr))


def vmfunc_sites(code: bytes, *, vaddr: int = 0) -> list[int]:
    """The address of every VMFUNC in `code` (mapped at vaddr), at every byte offset:
    aligned, inside another instruction, or across two (no prefix is needed to run it)."""
    sites, at = [], code.find(VMFUNC)
    while at != -1:
        sites.append(vaddr + at)
        at = code.find(VMFUNC, at + 1)
    return sites


def format_table(report: ScanReport) -> str:
    """A plain-text report: one summary line, then one row per finding."""
    writers = report.pkru_writers
    hidden = sum(not f.aligned for f in writers)
    lines = [
        f"{report.file}: {len(writers)} wrpkru/xrstor occurrence(s) ({hidden} hidden), "
        f"{len(report.privileged)} aligned privileged instruction(s)"
    ]
    if not report.findings:
        return lines[0]
    header = ("offset", "vaddr", "class", "aligned", "bytes", "overlaps")
    rows = [
        (
            f"{f.offset:#x}",
            f"{f.vaddr:#x}",
            f.kind,
            "yes" if f.aligned else "hidden",
            f.encoding.hex(" "),
            "; ".join(map(str, f.overlaps)),
        )
        for f in report.findings
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ElfError(
            f"{path}: cannot read ({exc.strerror or exc})", hint="check the path"
        ) from exc


# ---- executable regions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeRegion:
    """Contiguous executable memory as the loader maps it: `code` at `vaddr`.

    Public: the scanner and the rewriter (bridge/rewrite/) both work region by region.
    Invariants:
      - `code` is whole pages: the segments' file bytes, and zeros wherever the loader
        maps zero fill (a segment's bss, the rest of its last page, gaps between segments);
      - `pieces` are the file-backed spans, (vaddr, length, file offset), in address
        order, each inside [vaddr, vaddr + len(code)); every nonzero byte of `code` lies
        in one of them.
    """

    vaddr: int
    code: bytes
    pieces: tuple[tuple[int, int, int], ...]  # (vaddr, length, file offset)

    def file_offset(self, vaddr: int) -> int:
        """Where the byte at `vaddr` is in the file; ValueError for zero fill."""
        for start, length, offset in self.pieces:
            if start <= vaddr < start + length:
                return offset + vaddr - start
        raise ValueError(f"{vaddr:#x} is zero fill, not file bytes")  # never nonzero bytes


def _page_up(address: int) -> int:
    return -(-address // PAGE_SIZE) * PAGE_SIZE


def code_regions(segments: Sequence[Segment]) -> Iterator[CodeRegion]:
    """The executable memory of `segments`, one CodeRegion per run of executable
    segments on adjacent pages, in address order (an occurrence spanning two such
    segments lies in one region). Non-executable segments are skipped."""
    group: list[Segment] = []
    for segment in sorted((s for s in segments if s.executable), key=lambda s: s.vaddr):
        if group and segment.vaddr // PAGE_SIZE * PAGE_SIZE != _page_up(group[-1].end):
            yield _region(group)
            group = []
        group.append(segment)
    if group:
        yield _region(group)


def _region(group: list[Segment]) -> CodeRegion:
    start = group[0].vaddr
    code = bytearray(_page_up(group[-1].end) - start)  # zero fill, as the loader maps
    for segment in group:
        code[segment.vaddr - start : segment.vaddr - start + len(segment.data)] = segment.data
    pieces = tuple((s.vaddr, len(s.data), s.file_offset) for s in group)
    return CodeRegion(start, bytes(code), pieces)


# ---- searching one region ----------------------------------------------------------------


def _scan_region(region: CodeRegion, sweep: list[Instruction]) -> list[Finding]:
    starts = [insn.vaddr for insn in sweep]
    findings = [
        _pkru_finding(region, sweep, starts, index, kind, length)
        for index, kind, length in _occurrences(region.code)
    ]
    findings += [
        _privileged_finding(region, insn, kind)
        for insn in sweep
        if (kind := _privileged_class(insn)) is not None
    ]
    return sorted(findings, key=lambda f: (f.vaddr, f.kind))


def _sweep(code: bytes, vaddr: int) -> list[Instruction]:
    """Capstone's linear sweep, one `.byte` per undecodable byte."""
    disassembler = Cs(CS_ARCH_X86, CS_MODE_64)
    disassembler.skipdata = True
    return list(map(Instruction._make, disassembler.disasm_lite(code, vaddr)))


def _occurrences(code: bytes) -> Iterator[tuple[int, str, int]]:
    """(index, class, length) of every PKRU writer, at every byte offset."""
    for match in _ESCAPES.finditer(code):
        hit = _decode_escape(code, match.start())
        if hit is not None:
            yield match.start(), *hit


def _decode_escape(code: bytes, index: int) -> tuple[str, int] | None:
    """The PKRU writer that starts with the 0F at `index`, as (class, length), if any."""
    if code[index : index + 3] == WRPKRU:
        return "wrpkru", 3
    if index + 2 >= len(code):
        return None
    modrm = code[index + 2]
    kind = _MEMORY_FORMS.get((code[index + 1], (modrm >> 3) & 7))
    if kind is None or modrm >> 6 == 3:
        return None
    operand = _memory_operand_length(code, index + 2)
    if operand is None or index + 2 + operand > len(code):
        return None
    return kind, 2 + operand


def _memory_operand_length(code: bytes, at: int) -> int | None:
    """Bytes of ModRM, SIB and displacement of a memory operand (32/64-bit addressing).

    None when the SIB byte lies past the end of `code`.
    """
    mod, rm = code[at] >> 6, code[at] & 7
    length = 1 + (0, 1, 4)[mod]
    if rm == 4:  # a SIB byte follows; base 5 with mod 0 means disp32, no base
        if at + 1 >= len(code):
            return None
        length += 1 + (4 if mod == 0 and code[at + 1] & 7 == 5 else 0)
    elif mod == 0 and rm == 5:  # RIP-relative disp32
        length += 4
    return length


def _pkru_finding(
    region: CodeRegion,
    sweep: list[Instruction],
    starts: list[int],
    index: int,
    kind: str,
    length: int,
) -> Finding:
    escape = region.vaddr + index
    insn = _aligned_as(region, sweep, starts, escape, kind, length)
    if insn is not None:
        start, end, overlaps, aligned = insn.vaddr, insn.end, (insn,), True
    else:
        start, end, aligned = escape, escape + length, False
        overlaps = _overlapping(sweep, starts, start, end)
    return Finding(
        region.file_offset(start),
        start,
        region.code[start - region.vaddr : end - region.vaddr],
        kind,
        aligned,
        overlaps,
    )


def _aligned_as(
    region: CodeRegion,
    sweep: list[Instruction],
    starts: list[int],
    escape: int,
    kind: str,
    length: int,
) -> Instruction | None:
    """The sweep's instruction that IS this occurrence (prefixes allowed), if any."""
    position = bisect_right(starts, escape) - 1
    if position < 0:
        return None
    insn = sweep[position]
    prefixes = region.code[insn.vaddr - region.vaddr : escape - region.vaddr]
    if (
        insn.end == escape + length
        and insn.mnemonic in PKRU_CLASSES[kind]
        and all(byte in _PREFIXES for byte in prefixes)
    ):
        return insn
    return None


def _overlapping(
    sweep: list[Instruction], starts: list[int], start: int, end: int
) -> tuple[Instruction, ...]:
    """The sweep's instructions that share a byte with [start, end)."""
    first = max(bisect_right(starts, start) - 1, 0)
    last = bisect_right(starts, end - 1)
    return tuple(insn for insn in sweep[first:last] if insn.end > start)


def _privileged_class(insn: Instruction) -> str | None:
    name = privileged_name(insn.mnemonic, insn.op_str)
    return None if name is None else f"privileged:{name}"


def _privileged_finding(region: CodeRegion, insn: Instruction, kind: str) -> Finding:
    start = insn.vaddr - region.vaddr
    return Finding(
        region.file_offset(insn.vaddr),
        insn.vaddr,
        region.code[start : start + insn.size],
        kind,
        True,
        (insn,),
    )
