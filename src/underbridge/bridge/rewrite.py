"""The rewriter of privilege deprivation: hidden PKRU writers out, port I/O into calls.

The scanner (bridge/scan.py) refuses a server whose executable bytes hold `wrpkru`,
XRSTOR or XRSTORS anywhere, even inside another instruction. Ordinary compiled code
holds such bytes by accident (a constant 0x90ef010f, an array offset). ERIM (Vahldiek-
Oberwagner et al., USENIX Security 2019, section 4.4) rewrites those spots into
equivalent code without the bytes; this module does that for static x86-64 ELF files,
and, given the kernel's checked routines, turns port I/O into calls of them.

`rewrite_elf(data, name=..., io_routines=None)` returns `Rewritten(data, changes)`: a new
ELF that `parse_elf` accepts, in which `scan_elf` finds no PKRU writer, or raises
RewriteRefused naming the first spot it cannot rewrite and why.

COST (bounded: a binary is refused before any work past its limits)
  Linear in the executable bytes: one linear sweep, shared with the scanner, and one
  pass over it; capstone's detailed decoding only for instructions that may name an
  address in code and for the sites' instructions. Then linear in the sites.
  - MAX_CODE_BYTES (4 MiB) of executable pages: CodeTooLarge, checked first; the kernel
    checks it before placing a server in kernel space, rewritten or not (the scan is
    linear too). The largest program here, SQLite with the YCSB driver, has 0.8 MiB of
    code (placed in kernel space in about 2 s), the servers 4 to 13 KiB. Random bytes
    are the sweep's worst case (an instruction per 2.5 bytes, many of them privileged):
    a scan of 4 MiB of them takes about 7 s of CPU.
  - MAX_SITES (4096) spots to patch (hidden PKRU writers and port I/O instructions):
    each costs a trampoline built by trial (about 0.5 ms); compiled code has a handful.

TECHNIQUE
  Instructions come from capstone's linear sweep of each executable region, exactly as
  the scanner sweeps them. A SITE is a run of whole instructions to move out of line:
    - a hidden PKRU writer's site starts as the instruction(s) its bytes overlap;
    - with `io_routines`, `in al, dx` / `out dx, al` start a site of their own.
  A site shorter than 5 bytes grows, instruction by instruction, first backwards, then
  forwards, while it stays one straight-line run (see the invariants). Its bytes become
  `jmp rel32` to a trampoline, then int3 up to its end. The trampoline holds code
  equivalent to the site's instructions, without any forbidden bytes, then `jmp` back to
  the first byte after the site. Per instruction, the first form whose bytes are clean:
    copied          the same bytes; a RIP-relative displacement is re-based for the
                    trampoline's address (that alone usually removes the pattern);
    imm split       `mov r32/r64, imm` -> `pushfq; mov r, a; xor r, b; popfq`, a^b == imm
                    (a movabs: a and b in a scratch register, saved with push/pop);
    imm via scratch `op r/m, imm32` (add/or/adc/sbb/and/sub/xor/cmp/mov/test, and their
                    accumulator forms) -> `push s; pushfq; mov s, a; xor s, b; popfq;
                    op r/m, s; pop s` (an [rsp + d] operand gets d + 8);
    push split      `push imm32` -> `push a; pushfq; xor qword [rsp + 8], b; popfq`;
    disp split      a memory operand [base + index*scale + disp] -> `push s;
                    lea s, [base + index*scale + d1]; op [s + d2]; pop s`, d1 + d2 == disp
                    (RIP-relative: `lea s, [rip + r]` aimed so s + d2 is the same address);
    port I/O        `in al, dx` -> `call inb`, `out dx, al` -> `call outb` (rel32);
    site exit       a last `ret` or indirect `jmp` is copied, a direct `jmp` re-targeted;
                    bytes after it in the site are dead and become int3.
  A random a/b or d1/d2 is drawn again (seeded by the address: the output is
  deterministic) until the new bytes are clean; a nop goes between two instructions
  whose junction would form a pattern, and before an instruction whose address-dependent
  bytes (rel32, RIP displacement) hold one.

  Trampolines live in a NEW PT_LOAD, R+X, at the first page boundary after the highest
  segment's end, its file bytes page-aligned at the end of the file, one int3 after each
  trampoline. The program header table is copied after them with the new entry added
  (after the last PT_LOAD) and PT_PHDR dropped; e_phoff and e_phnum follow. Everything
  else in the file, the section headers included, stays where it was.

INVARIANTS (checked before returning; a violation refuses)
  - `parse_elf` accepts the result and `scan_elf(result).pkru_writers` is empty; with
    `io_routines`, the sweep finds no port I/O instruction either;
  - every original byte outside the patched sites is unchanged;
  - a site is straight-line: no jcc, call, loop or far transfer in it, a ret or jmp only
    as its last live instruction; it lies in file bytes of one segment, holds no
    undecodable byte before its exit, and no address that anything may jump to lies
    strictly inside it, nor any address the code reads as data at or inside it.
  Addresses that may be jumped to: direct jmp/jcc/call/loop targets, the entry point,
  symbols, immediates and RIP-relative `lea` results pointing into code, and every
  aligned 4- and 8-byte word in non-executable segments pointing into code (jump
  tables, function pointers).

LIMITS AND ASSUMPTIONS
  - Indirect jumps land only on those addresses (ERIM's assumption): a computed jump into
    the middle of a patched range whose address is not found as above breaks the program.
  - The stack below RSP is free (guests are built with -mno-red-zone): trampolines push.
  - Not rewritten (refused): an aligned wrpkru/xrstor/xrstors (the program itself writes
    PKRU); bytes capstone cannot decode (data in code); a pattern in a call, jcc or loop;
    an instruction none of the forms above cleans (e.g. imul's immediate, an immediate and
    a displacement both holding patterns, VEX/EVEX with the pattern in a field that must
    change, 32-bit addressing); a site that cannot reach 5 bytes; with `io_routines`,
    port I/O other than `in al, dx` / `out dx, al`, and routines out of rel32 reach.
  - Trampolines keep semantics, not addresses: a fault inside one reports its address.
"""

from __future__ import annotations

import io
import random
import re
import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_RIP
from elftools.elf.elffile import ELFFile

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.scan import (
    CodeRegion,
    Finding,
    Instruction,
    code_regions,
    scan_elf,
    scan_image,
)
from underbridge.errors import UserError
from underbridge.kernel.loader import PAGE_SIZE, ElfImage, parse_elf

JMP_LEN = 5  # E9 rel32: the patch written over a site
_INT3, _NOP, _PUSHFQ, _POPFQ = 0xCC, 0x90, 0x9C, 0x9D
_MASK64 = (1 << 64) - 1
_LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_VEX_ESCAPES = frozenset({0xC4, 0xC5, 0x62})
_PT_LOAD, _PT_PHDR, _PF_R, _PF_X = 1, 6, 4, 1
_PHDR = struct.Struct("<IIQQQQQQ")
_E_PHOFF, _E_PHNUM = 0x20, 0x38
_TRIES = 48  # random draws per strategy and scratch register
_SHIFTS = 16  # nop shifts tried for an instruction, trampoline starts tried for a site
_SCALE_BITS = {1: 0, 2: 1, 4: 2, 8: 3}
_RSP = 4
_RIP = -1  # _Mem.base for RIP-relative operands

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
#: `op r/m, imm32` (opcode, ModRM.reg) or accumulator short form -> `op r/m, r` opcode.
_GROUP1_REG_FORM = {0: 0x01, 1: 0x09, 2: 0x11, 3: 0x19, 4: 0x21, 5: 0x29, 6: 0x31, 7: 0x39}
_ACCUMULATOR_REG_FORM = {0x05: 0x01, 0x0D: 0x09, 0x15: 0x11, 0x1D: 0x19, 0x25: 0x21,
                         0x2D: 0x29, 0x35: 0x31, 0x3D: 0x39, 0xA9: 0x85}
_PORT_IO = frozenset({"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"})
_BRANCH_GROUPS = frozenset({CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_IRET,
                            CS_GRP_BRANCH_RELATIVE})
#: The mnemonics capstone puts in _BRANCH_GROUPS (see _flow), the returns among them.
_RETURNS = frozenset({"ret", "retf", "retfq"})
_BRANCHES = _RETURNS | frozenset({
    "jmp", "ljmp", "call", "lcall", "jrcxz", "jecxz", "loop", "loope", "loopne", "iret",
    "iretd", "iretq", "sysret", "sysretq", "sysexit", "sysexitq", "xbegin",
    *(f"j{cc}" for cc in ("a", "ae", "b", "be", "e", "g", "ge", "l", "le", "ne", "no", "np",
                          "ns", "o", "p", "s"))})
_NUMBER = re.compile(r"0x[0-9a-f]+|[0-9]+")
_HEX = re.compile(r"0x[0-9a-f]+")
_RIP_RELATIVE = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|[0-9]+)\]")


# ---- the API --------------------------------------------------------------------------


class RewriteRefused(UserError):
    """The binary holds something no rewrite can remove while keeping its meaning."""


class CodeTooLarge(RewriteRefused):
    """More executable bytes than a server in kernel space may have (MAX_CODE_BYTES)."""


#: Executable bytes (whole pages, as mapped) a server in kernel space may have.
MAX_CODE_BYTES = 4 << 20
#: Spots one rewrite may patch.
MAX_SITES = 4096


def check_code_size(image: ElfImage, name: str) -> None:
    """Raise CodeTooLarge if `image` has more executable pages than MAX_CODE_BYTES."""
    size = sum(len(region.code) for region in code_regions(image.segments))
    if size > MAX_CODE_BYTES:
        raise CodeTooLarge(
            f"{name}: {size / (1 << 20):.1f} MiB of executable pages, more than the "
            f"{MAX_CODE_BYTES >> 20} MiB a server in kernel space may have (loading scans "
            "and rewrites every byte)",
            hint="run it in user space, or split it into smaller servers")


@dataclass(frozen=True, slots=True)
class Change:
    """One patched site.

    vaddr, offset    the site's first address, and its position in the file;
    original         the site's original bytes;
    patch            what replaced them: `jmp rel32` to the trampoline, then int3;
    trampoline, code where the equivalent code sits, and its bytes;
    why              what the site removes ("wrpkru at 0x401005 (hidden)", "in al, dx ...");
    how              one line per instruction: its text and the form it took.
    """

    vaddr: int
    offset: int
    original: bytes
    patch: bytes
    trampoline: int
    code: bytes
    why: tuple[str, ...]
    how: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.vaddr + len(self.original)


@dataclass(frozen=True, slots=True)
class Rewritten:
    """The rewritten ELF file and every change made to it (by address)."""

    data: bytes
    changes: tuple[Change, ...]


def rewrite_elf(data: bytes, *, name: str, io_routines: IoRoutines | None = None
                ) -> Rewritten:
    """Rewrite a static x86-64 ELF (see the module docstring).

    Raises ElfError for a file the loader refuses, RewriteRefused for one that cannot be
    rewritten (the message names the spot and the reason), CodeTooLarge (a
    RewriteRefused) for one past MAX_CODE_BYTES.
    """
    data = bytes(data)
    image = parse_elf(data, name=name)
    check_code_size(image, name)
    report, swept = scan_image(image, name)
    program = _Program(name, data, image, io_routines, swept)
    cores = [program.core_of_finding(f) for f in report.pkru_writers]
    if io_routines is not None:
        cores += program.io_cores()
    if not cores:
        return Rewritten(data, ())
    if len(cores) > MAX_SITES:
        raise RewriteRefused(
            f"{name}: {len(cores)} spots to patch (hidden PKRU writers and port I/O), more "
            f"than the rewriter's limit of {MAX_SITES}; compiled code has a handful",
            hint="run it in user space, or change the source so the bytes vanish")
    sites = program.plan(cores)
    result, changes = program.emit(sites)
    _verify(result, name, io_routines is not None)
    return Rewritten(result, tuple(changes))


# ---- instructions --------------------------------------------------------------------


class _Insn:
    """One instruction of the sweep. flow: "data" (undecodable byte), "next" (falls
    through), "exit" (ret or jmp: ends a straight-line run), "branch" (anything else
    that transfers control).

    `cs`, capstone's detailed decoding, is made on first use: decoding every instruction
    in detail costs about 100 times the plain sweep, and only branches, instructions
    that name an address in code and the instructions of sites need it.
    """

    __slots__ = ("_cs", "flow", "mnemonic", "offset", "op_str", "raw", "target", "vaddr")

    def __init__(self, vaddr: int, raw: bytes, mnemonic: str, op_str: str, offset: int | None,
                 flow: str, target: int | None) -> None:
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
        flow, target = ("data", None) if lite.mnemonic == ".byte" else _flow(
            lite.mnemonic, lite.op_str)  # .byte: capstone's skipdata, an undecodable byte
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


def _file_offset(region: CodeRegion, starts: list[int], vaddr: int, length: int
                 ) -> int | None:
    index = bisect_right(starts, vaddr) - 1
    if index < 0:
        return None
    start, size, offset = region.pieces[index]
    return offset + vaddr - start if vaddr + length <= start + size else None


# ---- the program: regions, sweeps, targets ---------------------------------------------


@dataclass(eq=False)
class _Site:
    region: int
    lo: int
    hi: int
    why: list[str]
    io: set[int] = field(default_factory=set)  # instruction indices to become calls


@dataclass(frozen=True, slots=True)
class _Mem:
    base: int | None  # register number, _RIP or None
    index: int | None
    scale: int
    disp: int  # for _RIP: the absolute address


class _NoForm(Exception):
    """No clean equivalent of an instruction at this address (the reason); internal:
    it never escapes this module."""


class _Program:
    def __init__(self, name: str, data: bytes, image: ElfImage, io_routines: IoRoutines | None,
                 swept: list[tuple[CodeRegion, list[Instruction]]]) -> None:
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
            hint=hint or "run it in user space, or change the source so the bytes vanish")

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
                targets.update(a for a in _aligned_words(segment.vaddr, segment.data)
                               if self.in_code(a))
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
            if self.in_code((lite.end + (disp if relative.group(1) == "+" else -disp))
                            & _MASK64):
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

    # -- what must move -------------------------------------------------------------

    def locate(self, vaddr: int) -> int:
        for index, (low, high) in enumerate(self.ranges):
            if low <= vaddr < high:
                return index
        raise AssertionError(f"{vaddr:#x} is not in executable memory")

    def core_of_finding(self, finding: Finding) -> _Site:
        what = f"{finding.kind} at {finding.vaddr:#x}"
        if finding.aligned:
            raise self.refuse(
                f"{what} is an aligned instruction: the program itself writes PKRU; no "
                "rewrite can keep its meaning",
                hint="remove the instruction; PKRU changes only through a gate")
        region = self.locate(finding.vaddr)
        starts = self.starts[region]
        lo = bisect_right(starts, finding.vaddr) - 1
        hi = bisect_right(starts, finding.vaddr + len(finding.encoding) - 1) - 1
        return _Site(region, lo, hi, [f"{what} (hidden)"])

    def io_cores(self) -> list[_Site]:
        cores = []
        for region, sweep in enumerate(self.sweeps):
            for index, lite in enumerate(sweep.lite):
                if lite.mnemonic.split()[-1] not in _PORT_IO:
                    continue
                insn = sweep[index]
                if insn.raw not in (b"\xec", b"\xee"):
                    raise self.refuse(
                        f"port I/O `{insn.mnemonic} {insn.op_str}` at {insn.vaddr:#x}: "
                        "only `in al, dx` and `out dx, al` become calls of the kernel's "
                        "checked routines (inb, outb); this form has none",
                        hint="do port I/O one byte at a time through DX and AL")
                cores.append(_Site(region, index, index, [str(insn)], {index}))
        return cores

    # -- planning sites ---------------------------------------------------------------

    def plan(self, cores: list[_Site]) -> list[_Site]:
        self.targets, data_refs = self._collect_targets()
        self.sorted_targets, self.sorted_refs = sorted(self.targets), sorted(data_refs)
        by_region: dict[int, list[_Site]] = {}
        for core in cores:
            by_region.setdefault(core.region, []).append(core)
        sites: list[_Site] = []
        for region in sorted(by_region):
            pending = deque(_merge(sorted(by_region[region], key=lambda c: c.lo)))
            done: list[_Site] = []
            while pending:
                site = pending.popleft()
                self._check(site)
                self._grow(site, done, pending)
                self._check(site)
                done.append(site)
            sites += done
        return sites

    def _grow(self, site: _Site, done: list[_Site], pending: deque[_Site]) -> None:
        sweep = self.sweeps[site.region]
        while sweep[site.hi].end - sweep[site.lo].vaddr < JMP_LEN:
            if self._can_prepend(site):
                if done and done[-1].hi == site.lo - 1:
                    _absorb(site, done.pop())
                else:
                    site.lo -= 1
            elif self._can_append(site):
                if pending and pending[0].lo == site.hi + 1:
                    _absorb(site, pending.popleft())
                else:
                    site.hi += 1
            else:
                span = sweep[site.hi].end - sweep[site.lo].vaddr
                insns = "; ".join(str(i) for i in sweep[site.lo : site.hi + 1])
                raise self.refuse(
                    f"{', '.join(site.why)}: occurrence inside a {span}-byte instruction "
                    f"sequence too short to patch ({insns}); a jmp needs {JMP_LEN} bytes and "
                    "no neighbouring straight-line instruction can join it (a branch, a "
                    "jump target or a segment boundary is next to it)")

    def _contiguous(self, first: _Insn, second: _Insn) -> bool:
        return (first.offset is not None and second.offset is not None
                and first.offset + len(first.raw) == second.offset)

    def _can_prepend(self, site: _Site) -> bool:
        sweep = self.sweeps[site.region]
        if site.lo == 0:
            return False
        before, first = sweep[site.lo - 1], sweep[site.lo]
        return (before.flow == "next" and self._contiguous(before, first)
                and first.vaddr not in self.targets
                and self.data_ref_in(before.vaddr, first.end) is None)

    def _can_append(self, site: _Site) -> bool:
        sweep = self.sweeps[site.region]
        if site.hi + 1 >= len(sweep):
            return False
        last, after = sweep[site.hi], sweep[site.hi + 1]
        exited = any(i.flow == "exit" for i in sweep[site.lo : site.hi + 1])
        return ((exited or after.flow in ("next", "exit")) and self._contiguous(last, after)
                and after.vaddr not in self.targets
                and self.data_ref_in(after.vaddr, after.end) is None)

    def _check(self, site: _Site) -> None:
        sweep = self.sweeps[site.region]
        insns = sweep[site.lo : site.hi + 1]
        start, end = insns[0].vaddr, insns[-1].end
        what = ", ".join(site.why)
        for insn in _live(insns):
            if insn.flow == "data":
                raise self.refuse(
                    f"{what} lies in bytes the disassembler cannot decode ({insn}): data in "
                    "an executable section? There is no instruction to re-encode")
            if insn.flow == "branch":
                raise self.refuse(
                    f"{what}: the occurrence involves `{insn}`, a branch whose meaning "
                    "depends on where it is; it cannot move to a trampoline")
            if insn.offset is None:
                raise self.refuse(f"{what}: `{insn}` is not backed by file bytes of one "
                                  "segment, so it cannot be patched")
        target = self.target_inside(start, end)
        if target is not None:
            raise self.refuse(
                f"{what}: {target:#x}, a possible jump target, lies strictly inside the "
                f"range to patch [{start:#x}, {end:#x}) ({'; '.join(map(str, insns))}); "
                "a jmp there would land in the middle of the patch")
        ref = self.data_ref_in(start, end)
        if ref is not None:
            raise self.refuse(f"{what}: the program reads {ref:#x}, inside the range to patch "
                              f"[{start:#x}, {end:#x}), as data")

    # -- emitting -------------------------------------------------------------------------

    def emit(self, sites: list[_Site]) -> tuple[bytes, list[Change]]:
        out = bytearray(self.data)
        segment_vaddr = _page_up(max(s.end for s in self.image.segments))
        blob = bytearray()
        changes = []
        for site in sorted(sites, key=lambda s: self.sweeps[s.region][s.lo].vaddr):
            change = self._place_site(site, out, segment_vaddr, blob)
            changes.append(change)
        return _with_segment(out, segment_vaddr, bytes(blob)), changes

    def _place_site(self, site: _Site, out: bytearray, segment_vaddr: int,
                    blob: bytearray) -> Change:
        insns = self.sweeps[site.region][site.lo : site.hi + 1]
        start, end = insns[0].vaddr, insns[-1].end
        offset = insns[0].offset
        assert offset is not None
        for shift in range(_SHIFTS):
            at = segment_vaddr + len(blob) + shift
            code, how = self._trampoline(site, insns, at)
            try:
                patch = _branch(0xE9, start, at) + bytes([_INT3]) * (end - start - JMP_LEN)
            except _NoForm as exc:
                raise self.refuse(f"{', '.join(site.why)}: {exc}") from None
            window = bytes(out[max(offset - 2, 0) : offset]) + patch + bytes(
                out[offset + len(patch) : offset + len(patch) + 2])
            if _clean(window):
                break
        else:
            raise self.refuse(f"{', '.join(site.why)}: no trampoline address gives a clean "
                              f"jmp at {start:#x}")
        original = bytes(out[offset : offset + len(patch)])
        out[offset : offset + len(patch)] = patch
        blob += bytes([_INT3]) * shift + code
        return Change(start, offset, original, patch, at, code, tuple(site.why), tuple(how))

    def _trampoline(self, site: _Site, insns: Sequence[_Insn], at: int
                    ) -> tuple[bytes, list[str]]:
        buf = bytearray()
        how = []
        live = _live(insns)
        for index, insn in enumerate(live, start=site.lo):
            build = self._forms(insn, replace_io=index in site.io)
            label = self._append(buf, at, build, f"{', '.join(site.why)}: `{insn}`")
            how.append(f"{insn} -> {label}")
        how += [f"{insn} -> int3 (dead after the site's exit)" for insn in insns[len(live):]]
        if live[-1].flow != "exit":
            back = insns[-1].end

            def jump_back(address: int) -> tuple[bytes, str]:
                return _branch(0xE9, address, back), "jmp back"

            self._append(buf, at, jump_back, f"{', '.join(site.why)}: the jmp back")
        buf.append(_INT3)
        return bytes(buf), how

    def _append(self, buf: bytearray, at: int, build: Callable[[int], tuple[bytes, str]],
                what: str) -> str:
        """Append `build(address)`'s bytes to buf, after nops if that makes them clean."""
        reason = "no clean encoding"
        for shift in range(_SHIFTS):
            address = at + len(buf) + shift
            try:
                piece, label = build(address)
            except _NoForm as exc:
                reason = str(exc)
                continue
            padded = bytes([_NOP]) * shift + piece
            if _clean(piece) and _clean(bytes(buf[-2:]) + padded):
                buf += padded
                return label
        raise self.refuse(f"{what}: {reason}")

    # -- equivalent forms of one instruction ------------------------------------------------

    def _forms(self, insn: _Insn, *, replace_io: bool) -> Callable[[int], tuple[bytes, str]]:
        assert insn.cs is not None
        if replace_io:
            assert self.io is not None
            routine, label = ((self.io.inb, "call inb") if insn.raw == b"\xec"
                              else (self.io.outb, "call outb"))
            return lambda at: (_branch(0xE8, at, routine), label)
        if insn.flow == "exit" and insn.target is not None:
            target = insn.target
            return lambda at: (_branch(0xE9, at, target), "jmp re-targeted")

        def build(at: int) -> tuple[bytes, str]:
            copied = _copy(insn, at)
            if copied is not None and _clean(copied):
                return copied, "copied" if copied == insn.raw else "copied, RIP disp re-based"
            if insn.flow == "exit":  # code after a ret or jmp would never run
                raise _NoForm("a ret or indirect jmp can only be copied")
            rng = random.Random(insn.vaddr * 131 + at)
            for strategy in (_imm_split, _push_split, _imm_via_scratch, _disp_split):
                result = strategy(insn, at, rng)
                if result is not None:
                    return result
            raise _NoForm("no equivalent form without the forbidden bytes (an immediate or "
                          "displacement only this instruction can hold?)")

        return build


def _merge(cores: list[_Site]) -> list[_Site]:
    merged: list[_Site] = []
    for core in cores:
        if merged and core.lo <= merged[-1].hi:
            _absorb(merged[-1], core)
        else:
            merged.append(core)
    return merged


def _absorb(site: _Site, other: _Site) -> None:
    site.lo, site.hi = min(site.lo, other.lo), max(site.hi, other.hi)
    site.why += [w for w in other.why if w not in site.why]
    site.io |= other.io


def _live(insns: Sequence[_Insn]) -> list[_Insn]:
    """The instructions that run: up to and including the first exit."""
    for index, insn in enumerate(insns):
        if insn.flow == "exit":
            return list(insns[: index + 1])
    return list(insns)


def _aligned_words(vaddr: int, data: bytes) -> Iterable[int]:
    for size, fmt in ((4, "<I"), (8, "<Q")):
        skip = -vaddr % size
        usable = (len(data) - skip) // size * size if len(data) > skip else 0
        yield from (value for (value,) in struct.iter_unpack(fmt, data[skip : skip + usable]))


# ---- cleanliness ----------------------------------------------------------------------


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


# ---- encoding --------------------------------------------------------------------------


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


def _page_up(address: int) -> int:
    return -(-address // PAGE_SIZE) * PAGE_SIZE


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


def _encode(at: int, prefixes: bytes, w: int, opcode: bytes, reg: int, rm: int | _Mem,
            tail: bytes = b"", *, force_rex: bool = False) -> bytes | None:
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


# ---- reading an instruction's encoding --------------------------------------------------


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
            mem.index and (index is None or index[1] != 64)):
        return None  # 32-bit addressing or a segment-only oddity
    return _Mem(base[0] if base else None, index[0] if index else None, mem.scale or 1,
                mem.disp)


def _scratch(cs: CsInsn, *, avoid: Iterable[int] = ()) -> list[int]:
    used, high_byte = _used(cs)
    used |= set(avoid)
    return [r for r in _SCRATCH if r not in used and not (high_byte and r >= 8)][:4]


def _rebase(mem: _Mem, pushed: int) -> _Mem:
    """The same operand after `pushed` bytes were pushed (RSP moved down)."""
    if mem.base == _RSP:
        return _Mem(mem.base, mem.index, mem.scale, mem.disp + pushed)
    return mem


# ---- the strategies ---------------------------------------------------------------------


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
    if (cs.mnemonic not in ("mov", "movabs") or len(ops) != 2 or layout is None
            or ops[0].type != X86_OP_REG or ops[1].type != X86_OP_IMM):
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
            code = (bytes([_PUSHFQ]) + _push(scratch)
                    + _rex(1, 0, 0, scratch >> 3) + bytes([0xB8 + (scratch & 7)])
                    + struct.pack("<Q", b)
                    + _rex(1, 0, 0, reg >> 3) + bytes([0xB8 + (reg & 7)]) + struct.pack("<Q", a)
                    + _rex(1, scratch >> 3, 0, reg >> 3) + bytes([0x31, 0xC0 | (scratch & 7) << 3
                                                                  | reg & 7])
                    + _pop(scratch) + bytes([_POPFQ]))
        else:
            a = rng.getrandbits(32)
            b = a ^ (imm & 0xFFFF_FFFF)
            code = (bytes([_PUSHFQ]) + _mov_imm32(reg, a, wide=wide)
                    + _xor_imm32(reg, b, wide=wide) + bytes([_POPFQ]))
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
        code = (b"\x68" + _p32(a) + bytes([_PUSHFQ]) + b"\x48\x81\x74\x24\x08" + _p32(a ^ imm)
                + bytes([_POPFQ]))
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
        new_opcode = {0x81: _GROUP1_REG_FORM.get(ext), 0xC7: 0x89 if ext == 0 else None,
                      0xF7: 0x85 if ext == 0 else None}.get(opcode)
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
            head = (_push(scratch) + bytes([_PUSHFQ]) + _mov_imm32(scratch, a, wide=wide)
                    + _xor_imm32(scratch, a ^ imm, wide=wide) + bytes([_POPFQ]))
            op = _encode(at + len(head), layout.prefixes, layout.w, bytes([new_opcode]),
                         scratch, rm, force_rex=bool(layout.rex))
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
    if (layout is None or layout.modrm is None or layout.modrm >> 6 == 3 or mem is None
            or 0x67 in layout.prefixes or not _stack_safe(cs, mem)):
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
            op = _encode(at + len(head), layout.prefixes, layout.w, layout.opcode, reg,
                         _Mem(scratch, None, 1, d2), tail, force_rex=bool(layout.rex))
            if op is None:
                continue
            code = head + op + _pop(scratch)
            if _clean(code):
                return code, f"disp split via lea into scratch {_GPR_NAMES[0][scratch]}"
    return None


# ---- the new file --------------------------------------------------------------------


def _with_segment(out: bytearray, vaddr: int, code: bytes) -> bytes:
    """`out` with `code` appended as a new R+X PT_LOAD at `vaddr`, and a new program
    header table (PT_PHDR dropped) after it."""
    phoff = struct.unpack_from("<Q", out, _E_PHOFF)[0]
    phnum = struct.unpack_from("<H", out, _E_PHNUM)[0]
    entries = [_PHDR.unpack_from(out, phoff + i * _PHDR.size) for i in range(phnum)]
    entries = [e for e in entries if e[0] != _PT_PHDR]
    file_offset = _page_up(len(out))
    new = (_PT_LOAD, _PF_R | _PF_X, file_offset, vaddr, vaddr, len(code), len(code), PAGE_SIZE)
    last_load = max((i for i, e in enumerate(entries) if e[0] == _PT_LOAD), default=-1)
    entries.insert(last_load + 1, new)
    out += bytes(file_offset - len(out)) + code
    out += bytes(-len(out) % 8)
    table_at = len(out)
    for entry in entries:
        out += _PHDR.pack(*entry)
    struct.pack_into("<Q", out, _E_PHOFF, table_at)
    struct.pack_into("<H", out, _E_PHNUM, len(entries))
    return bytes(out)


def _verify(data: bytes, name: str, io_rewritten: bool) -> None:
    parse_elf(data, name=name)
    report = scan_elf(data, name=name)
    left = report.pkru_writers
    if left:
        found = ", ".join(f"{f.kind} at {f.vaddr:#x}" for f in left[:5])
        raise RewriteRefused(f"{name}: the rewritten code still holds PKRU writers ({found})",
                             hint="a rewriter bug: report it with the binary")
    if io_rewritten:
        io_left = [f for f in report.privileged
                   if f.kind.removeprefix("privileged:") in _PORT_IO]
        if io_left:
            raise RewriteRefused(
                f"{name}: port I/O remains at {io_left[0].vaddr:#x} after rewriting",
                hint="a rewriter bug: report it with the binary")
