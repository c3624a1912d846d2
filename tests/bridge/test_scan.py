"""The privilege-deprivation scanner, against a corpus of crafted binaries.

Each corpus binary is a C guest built by the project's toolchain, at its own base, with
wrpkru/XRSTOR/XRSTORS occurrences planted at labelled addresses: aligned, inside an
immediate or a displacement, spanning instructions, in data in an executable section,
at the segment's first and last bytes. Every plant must be found with its class,
alignment and overlapped instructions, and nothing else may be.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.bridge.gate import GateSpec, generate, wrpkru_offsets
from underbridge.bridge.scan import (
    PKRU_CLASSES,
    ScanReport,
    format_table,
    scan_code,
    scan_elf,
)
from underbridge.elf.image import parse_elf
from underbridge.errors import ElfError, UserError
from underbridge.guestbuild import toolchain
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

WRPKRU = b"\x0f\x01\xef"

# ---- the corpus --------------------------------------------------------------------


@dataclass(frozen=True)
class Plant:
    """An expected finding at symbol `label` (+ `delta`)."""

    label: str
    kind: str
    aligned: bool | None  # None: depends on where the linear sweep lands (data)
    overlaps: tuple[str, ...] | None  # mnemonics; None: not checked
    delta: int = 0


@dataclass(frozen=True)
class Snippet:
    """Intel-syntax assembly for .text with `{p}` standing for a unique label prefix."""

    asm: str
    plants: tuple[Plant, ...] = ()


def snippet(asm: str, *plants: tuple) -> Snippet:
    return Snippet(asm, tuple(Plant(*plant) for plant in plants))


ALIGNED_WRPKRU = snippet("{p}a: wrpkru", ("a", "wrpkru", True, ("wrpkru",)))
IN_IMM32 = snippet("{p}a = . + 1\n mov eax, 0x90ef010f", ("a", "wrpkru", False, ("mov",)))
IN_IMM64 = snippet(
    "{p}a = . + 5\n movabs rax, 0x5544ef010f332211", ("a", "wrpkru", False, ("movabs",))
)
IN_DISP32 = snippet(
    "{p}a = . + 2\n mov ecx, dword ptr [rbx + 0xef010f]", ("a", "wrpkru", False, ("mov",))
)
IN_RIP_DISP = snippet(
    "{p}a = . + 3\n lea rax, [rip + 0x12ef010f]", ("a", "wrpkru", False, ("lea",))
)
IN_DISP8_IMM = snippet(
    "{p}a = . + 3\n cmp dword ptr [rax + 8], 0x90ef010f", ("a", "wrpkru", False, ("cmp",))
)
SPAN_TWO = snippet(
    "{p}a = . + 1\n mov al, 0x0f\n add edi, ebp",  # b0 0f | 01 ef
    ("a", "wrpkru", False, ("mov", "add")),
)
SPAN_INTO_OUT = snippet(  # b8 00 00 0f 01 | ef: the `out` is aligned and privileged
    "{p}a = . + 3\n mov eax, 0x010f0000\n{p}b: out dx, eax",
    ("a", "wrpkru", False, ("mov", "out")),
    ("b", "privileged:out", True, ("out",)),
)
SPAN_THREE = snippet(  # b0 0f | ae | 68 10 ..: xrstor [rax + 0x10] across three
    "{p}a = . + 1\n mov al, 0x0f\n scasb\n push 0x11223310",
    ("a", "xrstor", False, ("mov", "scasb", "push")),
)
XRSTOR_ALIGNED = snippet(
    "{p}a: xrstor [rax]\n{p}b: xrstor [rsp + 8]\n{p}c: xrstor [rip + 0x40]\n"
    "{p}d: xrstor [rbp + rcx*4 + 0x1000]",
    *((name, "xrstor", True, ("xrstor",)) for name in "abcd"),
)
XRSTOR64_ALIGNED = snippet(  # the finding starts at the REX prefix
    "{p}a: xrstor64 [rdi]\n{p}b: xrstor64 [r12 + 0x10]",
    *((name, "xrstor", True, ("xrstor64",)) for name in "ab"),
)
XRSTORS_ALIGNED = snippet(
    "{p}a: xrstors [rdi]\n{p}b: xrstors64 [rbx + 0x10]",
    ("a", "xrstors", True, ("xrstors",)),
    ("b", "xrstors", True, ("xrstors64",)),
)
XRSTOR_IN_IMM = snippet("{p}a = . + 1\n mov eax, 0x9028ae0f", ("a", "xrstor", False, ("mov",)))
XRSTORS_IN_DISP = snippet(
    "{p}a = . + 2\n mov ecx, [rdx + 0x1fc70f]", ("a", "xrstors", False, ("mov",))
)
XRSTOR64_HIDDEN = snippet(
    "{p}a = . + 3\n movabs rax, 0x2fae0f48",  # 48 b8 48 0f ae 2f 00..
    ("a", "xrstor", False, ("movabs",)),
)
XRSTOR_SIB_DISP32 = snippet(  # 0f ae 2c 25 <disp32>: all 8 immediate bytes
    "{p}a = . + 2\n movabs rax, 0x11223344252cae0f", ("a", "xrstor", False, ("movabs",))
)
NEAR_MISSES = snippet(  # none of these writes PKRU; hidden hlt/cli/out are not listed
    "lfence\n mfence\n sfence\n xsave [rax]\n xsaveopt [rax]\n fxrstor [rax]\n"
    " clflush [rax]\n xsaves [rdi]\n xsavec [rdi]\n cmpxchg16b [rdi]\n rdrand eax\n"
    " rdseed eax\n rdpkru\n mov eax, 0x90efae0f\n mov eax, 0x90e8ae0f\n"
    " mov eax, 0x90d8c70f\n mov eax, 0x90ee010f\n mov eax, 0x0f01ef90\n"
    " mov eax, 0xf4fafbee\n movabs rax, 0xef01ef010e0f0f01"
)
PRIVILEGED = snippet(
    "\n".join(
        f"{{p}}{index}: {text}"
        for index, (text, _) in enumerate(
            [
                ("mov cr3, rax", "mov-cr3"),
                ("mov rax, cr0", "mov-cr0"),
                ("mov cr4, rax", "mov-cr4"),
                ("mov cr8, rax", "mov-cr8"),
                ("mov dr7, rax", "mov-dr7"),
                ("wrmsr", "wrmsr"),
                ("rdmsr", "rdmsr"),
                ("lgdt [rax]", "lgdt"),
                ("lidt [rax]", "lidt"),
                ("lldt ax", "lldt"),
                ("ltr ax", "ltr"),
                ("hlt", "hlt"),
                ("cli", "cli"),
                ("sti", "sti"),
                ("invlpg [rax]", "invlpg"),
                ("invpcid rax, [rdi]", "invpcid"),
                ("in al, dx", "in"),
                ("out 0x80, al", "out"),
                ("rep insb", "insb"),
                ("outsd", "outsd"),
                ("swapgs", "swapgs"),
                ("sysretq", "sysretq"),
                ("iretq", "iretq"),
                ("wbinvd", "wbinvd"),
                ("invd", "invd"),
                ("clts", "clts"),
                ("xsetbv", "xsetbv"),
                ("vmfunc", "vmfunc"),
                ("vmcall", "vmcall"),
            ]
        )
    ),
)
PRIVILEGED_CLASSES = [
    "mov-cr3",
    "mov-cr0",
    "mov-cr4",
    "mov-cr8",
    "mov-dr7",
    "wrmsr",
    "rdmsr",
    "lgdt",
    "lidt",
    "lldt",
    "ltr",
    "hlt",
    "cli",
    "sti",
    "invlpg",
    "invpcid",
    "in",
    "out",
    "insb",
    "outsd",
    "swapgs",
    "sysretq",
    "iretq",
    "wbinvd",
    "invd",
    "clts",
    "xsetbv",
    "vmfunc",
    "vmcall",
]
PRIVILEGED = Snippet(
    PRIVILEGED.asm,
    tuple(
        Plant(str(index), f"privileged:{kind}", True, None)
        for index, kind in enumerate(PRIVILEGED_CLASSES)
    ),
)
DATA_BYTES = snippet(  # raw data in .text, then a resynchronising nop sled
    "{p}a: .byte 0x0f, 0x01, 0xef\n .byte 0xff, 0xff\n{p}b: .byte 0x0f, 0xae, 0x68, 0x08\n"
    " .byte 0x0f, 0xae, 0xe8, 0xc4\n{p}c: .byte 0x0f, 0xc7, 0x1c, 0x24\n .fill 16, 1, 0x90",
    ("a", "wrpkru", None, None),
    ("b", "xrstor", None, None),
    ("c", "xrstors", None, None),
)

EVERY_CODE_SNIPPET = (
    ALIGNED_WRPKRU,
    IN_IMM32,
    IN_IMM64,
    IN_DISP32,
    IN_RIP_DISP,
    IN_DISP8_IMM,
    SPAN_TWO,
    SPAN_INTO_OUT,
    SPAN_THREE,
    XRSTOR_ALIGNED,
    XRSTOR64_ALIGNED,
    XRSTORS_ALIGNED,
    XRSTOR_IN_IMM,
    XRSTORS_IN_DISP,
    XRSTOR64_HIDDEN,
    XRSTOR_SIB_DISP32,
    NEAR_MISSES,
)


@dataclass(frozen=True)
class Case:
    name: str
    base: int
    snippets: tuple[Snippet, ...] = ()
    c_code: str = ""  # more C at file scope
    c_plants: tuple[Plant, ...] = ()  # expected from C symbols (label = symbol)
    sections: dict[str, str] = field(default_factory=dict)  # other section -> asm


C_ARRAY = """\
__attribute__((section(".text"), used)) const unsigned char blob[] = {
    0x90, 0x0f, 0x01, 0xef, 0x48, 0x0f, 0xae, 0x28, 0x0f, 0xae, 0xe8,
    0x0f, 0xc7, 0x5f, 0x10, 0x0f, 0x01, 0xef,
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
};
"""
C_ARRAY_PLANTS = (
    Plant("blob", "wrpkru", None, None, 1),
    Plant("blob", "xrstor", None, None, 5),
    Plant("blob", "xrstors", None, None, 11),
    Plant("blob", "wrpkru", None, None, 15),
)

CORPUS = [
    Case("aligned_wrpkru", 0x400000, (ALIGNED_WRPKRU,)),
    Case("imm32", 0x10000, (IN_IMM32,)),
    Case("imm64", 0x1234000, (IN_IMM64,)),
    Case("disp32", 0x7000_0000, (IN_DISP32,)),
    Case("rip_disp32", 0x400000, (IN_RIP_DISP,)),
    Case("disp8_and_imm", 0x2000_0000, (IN_DISP8_IMM,)),
    Case("span_two", 0x500000, (SPAN_TWO,)),
    Case("span_into_out", 0x600000, (SPAN_INTO_OUT,)),
    Case("span_three", 0x10000, (SPAN_THREE,)),
    Case("xrstor_aligned", 0x400000, (XRSTOR_ALIGNED,)),
    Case("xrstor64_aligned", 0x7F00_0000, (XRSTOR64_ALIGNED,)),
    Case("xrstors_aligned", 0x800000, (XRSTORS_ALIGNED,)),
    Case("xrstor_in_imm", 0x900000, (XRSTOR_IN_IMM,)),
    Case("xrstors_in_disp", 0xA00000, (XRSTORS_IN_DISP,)),
    Case("xrstor64_hidden", 0x1000_0000, (XRSTOR64_HIDDEN,)),
    Case("xrstor_sib_disp32", 0x20000, (XRSTOR_SIB_DISP32,)),
    Case("near_misses", 0x400000, (NEAR_MISSES,)),
    Case(
        "several",
        0x3000_0000,
        (
            IN_IMM32,
            ALIGNED_WRPKRU,
            SPAN_TWO,
            XRSTOR_IN_IMM,
            XRSTORS_IN_DISP,
            IN_IMM64,
            ALIGNED_WRPKRU,
            IN_DISP32,
        ),
    ),
    Case("privileged", 0x400000, (PRIVILEGED,)),
    Case("c_array_in_text", 0x440000, c_code=C_ARRAY, c_plants=C_ARRAY_PLANTS),
    Case("asm_data_in_text", 0x50000, (IN_IMM32, DATA_BYTES, IN_DISP32)),
    # (.p2align: the linker pads between .init and .text with zeros, which would throw
    # the linear sweep out of step with the code that follows)
    Case("segment_start", 0x400000, sections={".init": "{p}a: .byte 0x0f, 0x01, 0xef\n.p2align 4"}),
    Case(
        "segment_end", 0x6000_0000, (IN_IMM64,), sections={".fini": "{p}a: .byte 0x0f, 0x01, 0xef"}
    ),
    Case(
        "segment_end_operand_in_zero_fill",
        0x400000,
        sections={".fini": "{p}a: .byte 0x0f, 0xae, 0x2c"},
    ),  # SIB byte: the loader's zero
    Case(
        "c_constant",
        0x400000,
        c_code="volatile unsigned sink;\nvoid plant(void) { sink = 0x00ef010fu; }\n",
    ),
    Case(
        "everything",
        0x7000_0000,
        (*EVERY_CODE_SNIPPET, DATA_BYTES),
        sections={".init": "{p}a: wrpkru\n.p2align 4"},
    ),
]
# Plants in other sections, by section (their label is `<case>_<section>_a`).
SECTION_PLANTS = {
    "segment_start": Plant("a", "wrpkru", None, None),
    "segment_end": Plant("a", "wrpkru", None, None),
    "segment_end_operand_in_zero_fill": Plant("a", "xrstor", None, None),
    "everything": Plant("a", "wrpkru", True, ("wrpkru",)),
}


def case_source(case: Case) -> tuple[str, list[Plant]]:
    """The C file of a case and its plants (with labels made unique)."""
    asm: list[str] = [".pushsection .text", ".intel_syntax noprefix", ".p2align 4"]
    plants = list(case.c_plants)
    for index, piece in enumerate(case.snippets):
        prefix = f"ub_plant_{index}_"
        asm += [piece.asm.replace("{p}", prefix), ".p2align 4"]
        plants += [
            Plant(prefix + p.label, p.kind, p.aligned, p.overlaps, p.delta) for p in piece.plants
        ]
    asm += [".att_syntax prefix", ".popsection"]
    for name, text in case.sections.items():
        prefix = f"ub_plant_{name[1:]}_"
        asm += [
            f'.pushsection {name},\\"ax\\"',
            ".intel_syntax noprefix",
            text.replace("{p}", prefix),
            ".att_syntax prefix",
            ".popsection",
        ]
        base = SECTION_PLANTS[case.name]
        plants.append(Plant(prefix + base.label, base.kind, base.aligned, base.overlaps))
    lines = "".join(f'    "{line}\\n"\n' for line in "\n".join(asm).splitlines())
    source = (
        f'#include "ub.h"\n{case.c_code}\n__asm__(\n{lines});\n'
        "int main(int argc, char **argv) { (void)argc; (void)argv; return 0; }\n"
    )
    return source, plants


def symbols(elf_bytes: bytes) -> dict[str, int]:
    symtab = ELFFile(io.BytesIO(elf_bytes)).get_section_by_name(".symtab")
    return {sym.name: sym["st_value"] for sym in symtab.iter_symbols() if sym.name}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scan-corpus")


def build_case(case: Case, directory: Path) -> tuple[Path, list[Plant]]:
    source, plants = case_source(case)
    path = directory / f"{case.name}.c"
    path.write_text(source)
    return toolchain.build_program(path, base=case.base), plants


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 24
    assert len({case.name for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_every_planted_occurrence_is_found_and_nothing_else(case, corpus_dir):
    elf, plants = build_case(case, corpus_dir)
    data = elf.read_bytes()
    report = scan_elf(elf)
    table = format_table(report)
    where = symbols(data)
    if case.name == "c_constant":  # gcc's own encoding of the constant, located by hand
        text = data[where["plant"] - case.base :]
        plants.append(Plant("plant", "wrpkru", False, ("mov",), text.index(WRPKRU)))
    unmatched = list(report.findings)
    for plant in plants:
        finding = matching(unmatched, plant, where[plant.label] + plant.delta)
        assert finding is not None, f"missed {plant}\n{table}"
        unmatched.remove(finding)
        if plant.aligned is not None:
            assert finding.aligned == plant.aligned, f"{plant}\n{table}"
        if plant.overlaps is not None:
            assert tuple(i.mnemonic for i in finding.overlaps) == plant.overlaps, table
        assert data[finding.offset : finding.offset + len(finding.encoding)] == finding.encoding
    assert unmatched == [], f"unplanted findings:\n{table}"


def matching(findings, plant, vaddr):
    """The finding at a plant: its start, or (alignment unknown) its 0F escape byte."""
    for finding in findings:
        if finding.kind != plant.kind:
            continue
        start = finding.vaddr if plant.aligned is not None else finding.escape_vaddr
        if start == vaddr:
            return finding
    return None


def test_hidden_findings_carry_their_exact_bytes(corpus_dir):
    elf, _ = build_case(CORPUS[[c.name for c in CORPUS].index("xrstor_sib_disp32")], corpus_dir)
    (finding,) = scan_elf(elf).pkru_writers
    assert finding.encoding.hex() == "0fae2c2544332211"  # ModRM, SIB, disp32
    assert not finding.aligned


def test_an_operand_completed_by_zero_fill_is_reported_with_it(corpus_dir):
    elf, _ = build_case(
        CORPUS[[c.name for c in CORPUS].index("segment_end_operand_in_zero_fill")], corpus_dir
    )
    (finding,) = scan_elf(elf).pkru_writers
    assert finding.encoding.hex() == "0fae2c00"  # the SIB byte is the loader's zero fill


def test_c_constants_compiled_by_gcc_are_caught(corpus_dir):
    elf, _ = build_case(CORPUS[[c.name for c in CORPUS].index("c_constant")], corpus_dir)
    (finding,) = scan_elf(elf).pkru_writers
    assert not finding.aligned
    assert [i.mnemonic for i in finding.overlaps] == ["mov"]


# ---- the project's own programs and gates --------------------------------------------


@pytest.mark.parametrize("base", [0x400000, 0x7000_0000])
@pytest.mark.parametrize("program", toolchain.list_programs())
def test_the_projects_programs_write_no_pkru(program, base):
    report = scan_elf(toolchain.build_program(program, base=base))
    assert report.pkru_writers == (), format_table(report)


def test_a_gate_has_exactly_its_two_checked_wrpkrus():
    spec = GateSpec(
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
    code = generate(spec)
    findings = scan_code(code, vaddr=spec.address)
    assert len(findings) == 2
    assert [f.vaddr - spec.address for f in findings] == wrpkru_offsets(code)
    assert all(f.kind == "wrpkru" and f.aligned for f in findings)


# ---- hand-built ELF files ------------------------------------------------------------

PF_RX, PF_R = 5, 4


def make_elf(segments: list[tuple[int, bytes, int]], *, memsz_extra: int = 0) -> bytes:
    """A static ET_EXEC with one PT_LOAD per (vaddr, data, flags), entry at the first."""
    header = 64 + 56 * len(segments)
    out = bytearray(header)
    phdrs = b""
    for vaddr, data, flags in segments:
        offset = -(-len(out) // 0x1000) * 0x1000 + vaddr % 0x1000
        out += bytes(offset - len(out)) + data
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, flags, offset, vaddr, vaddr, len(data), len(data) + memsz_extra, 0x1000
        )
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    out[:64] = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, segments[0][0], 64, 0, 0, 64, 56, len(segments), 64, 0, 0
    )
    out[64:header] = phdrs
    return bytes(out)


def test_an_occurrence_spanning_two_adjacent_executable_segments_is_found():
    first = b"\x90" * 0xFFE + b"\x0f\x01"  # ends exactly on its last page's end
    elf = make_elf([(0x400000, first, PF_RX), (0x401000, b"\xef\xc3", PF_RX)])
    (finding,) = scan_elf(elf).pkru_writers
    assert (finding.vaddr, finding.kind, finding.encoding) == (0x400FFE, "wrpkru", WRPKRU)
    assert elf[finding.offset : finding.offset + 2] == b"\x0f\x01"


def test_segments_on_pages_apart_do_not_join():
    first = b"\x90" * 0xFFE + b"\x0f\x01"
    elf = make_elf([(0x400000, first, PF_RX), (0x402000, b"\xef\xc3", PF_RX)])
    assert scan_elf(elf).pkru_writers == ()


# ---- occurrences split across pages (PKU Pitfalls: two pages that scan clean) -----------


@pytest.mark.parametrize(
    ("tail", "head", "kind"),
    [
        (b"\x0f\x01", b"\xef", "wrpkru"),
        (b"\x0f", b"\x01\xef", "wrpkru"),
        (b"\x0f\xae", b"\x28", "xrstor"),  # xrstor [rax]
        (b"\x0f\xc7", b"\x1c\x24", "xrstors"),  # xrstors [rsp]: ModRM and SIB on the next page
    ],
)
def test_an_occurrence_split_across_a_page_boundary_is_found(tail, head, kind):
    # (a) inside one segment, (b) across two segments on adjacent pages: both one region.
    first = b"\x90" * (0x1000 - len(tail)) + tail
    one = make_elf([(0x400000, first + head + b"\xc3", PF_RX)])
    two = make_elf([(0x400000, first, PF_RX), (0x401000, head + b"\xc3", PF_RX)])
    for elf in (one, two):
        (finding,) = scan_elf(elf).pkru_writers
        assert (finding.escape_vaddr, finding.kind) == (0x401000 - len(tail), kind)
        assert finding.encoding == tail + head
    # Neither page alone holds it: a scanner that vetted pages one by one would pass both.
    assert not [f for f in scan_code(first, vaddr=0x400000) if f.writes_pkru]
    assert not [f for f in scan_code(head + b"\xc3", vaddr=0x401000) if f.writes_pkru]


def test_a_run_of_adjacent_executable_segments_is_one_region():
    nops = b"\x90" * 0x1000
    elf = make_elf(
        [
            (0x400000, nops, PF_RX),
            (0x401000, nops[2:] + b"\x0f\x01", PF_RX),
            (0x402000, b"\xef\xc3", PF_RX),
        ]
    )
    (finding,) = scan_elf(elf).pkru_writers
    assert (finding.vaddr, finding.kind, finding.aligned) == (0x401FFE, "wrpkru", True)
    assert elf[finding.offset : finding.offset + 2] == b"\x0f\x01"  # in the middle piece


def test_bytes_continuing_into_a_non_executable_page_are_not_an_occurrence():
    # (c) execution cannot continue into a page without X: fetching its bytes faults.
    first = b"\x90" * 0xFFE + b"\x0f\x01"
    elf = make_elf([(0x400000, first, PF_RX), (0x401000, b"\xef\xc3", PF_R)])
    assert scan_elf(elf).pkru_writers == ()


def test_a_wrpkru_split_across_pages_is_refused():
    source = toolchain.guest_root() / "attacks" / "pkru_split.c"
    elf = toolchain.build_program(source, base=0x0300_0000)
    data = elf.read_bytes()
    where = symbols(data)
    writers = scan_elf(elf).pkru_writers
    assert {(f.escape_vaddr, f.kind, f.aligned) for f in writers} == {
        (where["split_plain"], "wrpkru", True),
        (where["split_hidden"], "wrpkru", False),
    }
    assert all((f.escape_vaddr + 2) % 0x1000 == 0 for f in writers)  # ef starts a page
    (text,) = [s for s in parse_elf(data).segments if s.executable]
    for page in range(0, len(text.data), 0x1000):  # no page holds one on its own
        code = text.data[page : page + 0x1000]
        assert not [f for f in scan_code(code, vaddr=text.vaddr + page) if f.writes_pkru]
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    with pytest.raises(UserError, match=r"its code can change PKRU \(wrpkru at "):
        kernel.spawn(elf, ["pkru_split", "plain"], in_kernel=True)


def test_non_executable_segments_are_not_scanned():
    elf = make_elf([(0x400000, b"\xc3", PF_RX), (0x402000, WRPKRU + b"\x0f\xae\x28", PF_R)])
    assert scan_elf(elf).findings == ()


def test_an_occurrence_cut_off_by_the_end_of_executable_memory_is_not_reported():
    # A SIB byte past the last executable page cannot be fetched.
    elf = make_elf([(0x400000, b"\x90" * 0xFFD + b"\x0f\xae\x2c", PF_RX)])
    assert scan_elf(elf).pkru_writers == ()


def test_file_offsets_and_vaddrs_differ_as_the_program_headers_say():
    elf = make_elf([(0x7000_0123, b"\x90" + WRPKRU, PF_RX), (0x7100_0000, b"\xc3", PF_R)])
    (finding,) = scan_elf(elf).findings
    assert finding.vaddr == 0x7000_0124
    assert finding.offset == 0x1124 and elf[finding.offset : finding.offset + 3] == WRPKRU


def test_json_has_the_documented_shape():
    elf = make_elf([(0x400000, b"\xb8\x0f\x01\xef\x90\xf4", PF_RX)])
    document = json.loads(scan_elf(elf, name="x.elf").to_json())
    assert document == {
        "file": "x.elf",
        "findings": [
            {
                "offset": 0x1001,
                "vaddr": 0x400001,
                "bytes": "0f 01 ef",
                "class": "wrpkru",
                "aligned": False,
                "overlaps": ["0x400000: mov eax, 0x90ef010f"],
            },
            {
                "offset": 0x1005,
                "vaddr": 0x400005,
                "bytes": "f4",
                "class": "privileged:hlt",
                "aligned": True,
                "overlaps": ["0x400005: hlt"],
            },
        ],
    }


def test_the_table_names_every_finding():
    elf = make_elf([(0x400000, b"\xb8\x0f\x01\xef\x90\x0f\xae\x28", PF_RX)])
    table = format_table(scan_elf(elf, name="x.elf"))
    assert table.splitlines()[0] == (
        "x.elf: 2 wrpkru/xrstor occurrence(s) (1 hidden), 0 aligned privileged instruction(s)"
    )
    assert "0x400001" in table and "mov eax, 0x90ef010f" in table and "xrstor ptr [rax]" in table
    assert format_table(ScanReport("y", ())).count("\n") == 0


def test_bad_input_is_an_elf_error(tmp_path):
    with pytest.raises(ElfError):
        scan_elf(tmp_path / "missing.elf")
    with pytest.raises(ElfError):
        scan_elf(b"not an elf at all" * 8)


# ---- properties --------------------------------------------------------------------

INTERESTING = st.sampled_from(
    [
        0x0F,
        0x01,
        0xEF,
        0xAE,
        0xC7,
        0x28,
        0x2C,
        0x25,
        0x1F,
        0x68,
        0xE8,
        0x48,
        0x66,
        0xF3,
        0x90,
        0xB8,
        0x00,
    ]
)
CODE = st.lists(st.one_of(INTERESTING, st.integers(0, 255)), max_size=300).map(bytes)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(code=CODE, where=st.integers(0, 300))
def test_a_planted_wrpkru_is_always_found(code, where):
    where = min(where, len(code))
    code = code[:where] + WRPKRU + code[where:]
    report = scan_elf(make_elf([(0x400000, code, PF_RX)]))
    hits = [f for f in report.pkru_writers if f.escape_vaddr == 0x400000 + where]
    assert [f.kind for f in hits] == ["wrpkru"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(code=CODE)
def test_findings_match_capstone_decoding_at_every_offset(code):
    """An independent oracle: capstone decoding one instruction at every 0F byte."""
    mapped = code + bytes(-len(code) % 0x1000 or 0x1000)  # the loader's zero fill
    decoder = Cs(CS_ARCH_X86, CS_MODE_64)
    expected = set()
    for index in range(len(code)):
        if code[index] == 0x0F:
            for _addr, _size, mnemonic, _ops in decoder.disasm_lite(
                mapped[index : index + 15], 0, 1
            ):
                kind = next((k for k, names in PKRU_CLASSES.items() if mnemonic in names), None)
                if kind:
                    expected.add((0x400000 + index, kind))
    found = {(f.escape_vaddr, f.kind) for f in scan_code(mapped, vaddr=0x400000) if f.writes_pkru}
    assert found == expected
