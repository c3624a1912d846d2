"""ELF parsing: the real hello binary, hand-made malformations, and a mutation fuzz.

Malformed files are made by patching bytes of the real hello ELF (built by gcc at
0x400000: an R headers segment, the R+X text segment, an R rodata segment, and a
PT_GNU_STACK entry).
"""

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underbridge.elf.image import (
    MAX_IMAGE_BYTES,
    MIN_VADDR,
    PAGE_SIZE,
    USER_END,
    ElfImage,
    parse_elf,
)
from underbridge.errors import ElfError

EHDR_SIZE = 64
PHDR_SIZE = 56
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
PF_X, PF_W, PF_R = 1, 2, 4

# Field name -> (struct format, offset) in the ELF64 header and in a program header.
EHDR_FIELDS = {
    "e_type": ("<H", 16),
    "e_machine": ("<H", 18),
    "e_entry": ("<Q", 24),
    "e_phoff": ("<Q", 32),
    "e_phentsize": ("<H", 54),
    "e_phnum": ("<H", 56),
}
PHDR_FIELDS = {
    "p_type": ("<I", 0),
    "p_flags": ("<I", 4),
    "p_offset": ("<Q", 8),
    "p_vaddr": ("<Q", 16),
    "p_filesz": ("<Q", 32),
    "p_memsz": ("<Q", 40),
}


@dataclass
class Elf:
    """A mutable copy of an ELF file with typed access to header fields."""

    raw: bytearray

    def get(self, field: str, phdr: int | None = None) -> int:
        fmt, offset = self._where(field, phdr)
        return struct.unpack_from(fmt, self.raw, offset)[0]

    def set(self, field: str, value: int, phdr: int | None = None) -> None:
        fmt, offset = self._where(field, phdr)
        struct.pack_into(fmt, self.raw, offset, value)

    def _where(self, field: str, phdr: int | None) -> tuple[str, int]:
        if phdr is None:
            return EHDR_FIELDS[field]
        fmt, offset = PHDR_FIELDS[field]
        return fmt, self.get("e_phoff") + phdr * PHDR_SIZE + offset

    def phdr_index(self, flags: int) -> int:
        """Index of the PT_LOAD with exactly these flags."""
        for i in range(self.get("e_phnum")):
            if self.get("p_type", i) == PT_LOAD and self.get("p_flags", i) == flags:
                return i
        raise LookupError(flags)

    def phdr_of_type(self, p_type: int) -> int:
        for i in range(self.get("e_phnum")):
            if self.get("p_type", i) == p_type:
                return i
        raise LookupError(p_type)


@pytest.fixture(scope="module")
def hello_bytes(hello_elf) -> bytes:
    return hello_elf.read_bytes()


def assert_consistent(image: ElfImage) -> None:
    """The invariants parse_elf promises (see the loader's module docstring)."""
    assert image.segments
    assert list(image.segments) == sorted(image.segments, key=lambda s: s.vaddr)
    for seg in image.segments:
        assert MIN_VADDR <= seg.vaddr < seg.vaddr + seg.memsz <= USER_END
        assert len(seg.data) <= seg.memsz
        assert not (seg.writable and seg.executable)
    assert sum(s.memsz for s in image.segments) <= MAX_IMAGE_BYTES
    for low, high in zip(image.segments, image.segments[1:], strict=False):
        last_page = (low.vaddr + low.memsz - 1) // PAGE_SIZE
        assert high.vaddr // PAGE_SIZE > last_page
    assert any(s.executable and s.vaddr <= image.entry < s.end for s in image.segments)


# ---- the real binary ---------------------------------------------------------------


def test_hello_parses(hello_elf, hello_bytes):
    image = parse_elf(hello_bytes, name=str(hello_elf))
    assert_consistent(image)
    assert image.segments[0].vaddr == 0x400000
    code = [seg for seg in image.segments if seg.executable]
    assert len(code) == 1
    assert code[0].vaddr <= image.entry < code[0].end
    assert not any(seg.writable for seg in image.segments)  # hello has no .data/.bss


def test_hello_segments_match_pyelftools(hello_elf, hello_bytes):
    image = parse_elf(hello_bytes)
    with hello_elf.open("rb") as stream:
        elf = ELFFile(stream)
        expected = [
            (seg["p_vaddr"], seg["p_memsz"], seg.data(), bool(seg["p_flags"] & PF_X))
            for seg in elf.iter_segments("PT_LOAD")
        ]
        entry = elf["e_entry"]
    actual = [(s.vaddr, s.memsz, s.data, s.executable) for s in image.segments]
    assert actual == expected
    assert image.entry == entry


def test_entry_is_start_symbol(hello_elf, hello_bytes):
    with hello_elf.open("rb") as stream:
        start = ELFFile(stream).get_section_by_name(".symtab").get_symbol_by_name("_start")
    assert parse_elf(hello_bytes).entry == start[0]["st_value"]


# ---- hand-made malformations --------------------------------------------------------


def _patch(**ehdr: int) -> Callable[[Elf], None]:
    def apply(elf: Elf) -> None:
        for field, value in ehdr.items():
            elf.set(field, value)

    return apply


def _patch_code(field: str, value: Callable[[Elf, int], int]) -> Callable[[Elf], None]:
    """Set `field` of the R+X segment's header to value(elf, index)."""

    def apply(elf: Elf) -> None:
        index = elf.phdr_index(PF_R | PF_X)
        elf.set(field, value(elf, index), index)

    return apply


def _set_byte(offset: int, value: int) -> Callable[[Elf], None]:
    def apply(elf: Elf) -> None:
        elf.raw[offset] = value

    return apply


def _retype_stack(p_type: int) -> Callable[[Elf], None]:
    def apply(elf: Elf) -> None:
        elf.set("p_type", p_type, elf.phdr_of_type(0x6474E551))  # PT_GNU_STACK

    return apply


def _no_loads(elf: Elf) -> None:
    for i in range(elf.get("e_phnum")):
        if elf.get("p_type", i) == PT_LOAD:
            elf.set("p_type", PT_NOTE, i)


def _overlap_headers_with_code(elf: Elf) -> None:
    """Move the headers segment into the code segment's last page, past its last byte."""
    code = elf.phdr_index(PF_R | PF_X)
    headers = elf.phdr_index(PF_R)  # the first R-only segment: ELF + program headers
    code_end = elf.get("p_vaddr", code) + elf.get("p_memsz", code)
    vaddr = code_end + 0x10  # same page, no byte in common
    elf.set("p_vaddr", vaddr, headers)
    elf.set("p_offset", vaddr % PAGE_SIZE, headers)


def _straddle_user_end(elf: Elf) -> None:
    code = elf.phdr_index(PF_R | PF_X)
    elf.set("p_vaddr", USER_END - PAGE_SIZE, code)
    elf.set("p_memsz", 2 * PAGE_SIZE, code)


def _entry_in_rodata(elf: Elf) -> None:
    rodata = [
        i
        for i in range(elf.get("e_phnum"))
        if elf.get("p_type", i) == PT_LOAD and elf.get("p_flags", i) == PF_R
    ][-1]
    elf.set("e_entry", elf.get("p_vaddr", rodata) + 8)


MALFORMED: dict[str, tuple[Callable[[Elf], None], str]] = {
    "bad magic": (_set_byte(3, ord("G")), "not an ELF file"),
    "32-bit": (_set_byte(4, 1), "not a 64-bit ELF"),
    "big-endian": (_set_byte(5, 2), "not a little-endian"),
    "i386 machine": (_patch(e_machine=3), "machine is EM_386, not x86-64"),
    "aarch64 machine": (_patch(e_machine=183), "not x86-64"),
    "PIE (ET_DYN)": (_patch(e_type=3), r"position-independent .*\(ET_DYN\)"),
    "relocatable": (_patch(e_type=1), "not an executable"),
    "bad phentsize": (_patch(e_phentsize=32), "program header size is 32"),
    "no phdrs": (_patch(e_phnum=0), "0 program headers"),
    "phdrs past end": (_patch(e_phoff=1 << 40), "program header table extends past"),
    "PT_INTERP": (_retype_stack(PT_INTERP), "PT_INTERP"),
    "PT_DYNAMIC": (_retype_stack(PT_DYNAMIC), "PT_DYNAMIC"),
    "no PT_LOAD": (_no_loads, r"no loadable \(PT_LOAD\)"),
    "W+X segment": (
        _patch_code("p_flags", lambda _e, _i: PF_R | PF_W | PF_X),
        "code is never writable",
    ),
    "filesz > memsz": (
        _patch_code("p_memsz", lambda e, i: e.get("p_filesz", i) - 1),
        "filesz .* > memsz",
    ),
    "segment beyond file": (
        _patch_code("p_offset", lambda e, _i: len(e.raw) // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE),
        "extends past the end of the file",
    ),
    "offset not congruent": (
        _patch_code("p_offset", lambda e, i: e.get("p_offset", i) + 8),
        "differ mod 4096",
    ),
    "huge memsz": (_patch_code("p_memsz", lambda _e, _i: 1 << 40), "memsz .* exceeds"),
    "kernel-half vaddr": (
        _patch_code("p_vaddr", lambda e, i: 0xFFFF_8000_0000_0000 | e.get("p_vaddr", i)),
        "outside user space",
    ),
    "vaddr below 64 KiB": (
        _patch_code("p_vaddr", lambda e, i: e.get("p_vaddr", i) & 0xFFFF),
        "outside user space",
    ),
    "crosses into kernel half": (_straddle_user_end, "outside user space"),
    "overlapping segments": (_overlap_headers_with_code, "overlap"),
    "entry outside code": (_entry_in_rodata, "entry point .* not inside an executable"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_is_refused(case, hello_bytes):
    mutate, expected = MALFORMED[case]
    elf = Elf(bytearray(hello_bytes))
    mutate(elf)
    with pytest.raises(ElfError, match=expected) as excinfo:
        parse_elf(bytes(elf.raw), name="victim.elf")
    message = excinfo.value.args[0]
    assert message.startswith("victim.elf: ")
    assert "\n" not in message
    assert excinfo.value.hint


@pytest.mark.parametrize("length", [0, 3, 40, 63])
def test_truncated_header(length, hello_bytes):
    with pytest.raises(ElfError, match="truncated"):
        parse_elf(hello_bytes[:length], name="short.elf")


@pytest.mark.parametrize("length", [100, 0x1800])
def test_truncated_body(length, hello_bytes):
    """Cut inside the program header table, then inside the code segment."""
    with pytest.raises(ElfError, match="truncated"):
        parse_elf(hello_bytes[:length], name="short.elf")


def test_pie_hint_mentions_no_pie(hello_bytes):
    elf = Elf(bytearray(hello_bytes))
    elf.set("e_type", 3)
    with pytest.raises(ElfError) as excinfo:
        parse_elf(bytes(elf.raw))
    assert "-no-pie" in excinfo.value.hint


def test_ignored_segments_and_empty_loads(hello_bytes):
    """PT_NOTE and zero-sized PT_LOADs carry nothing to map and are skipped."""
    elf = Elf(bytearray(hello_bytes))
    elf.set("p_type", PT_NOTE, elf.phdr_of_type(0x6474E551))
    headers = elf.phdr_index(PF_R)
    elf.set("p_filesz", 0, headers)
    elf.set("p_memsz", 0, headers)
    image = parse_elf(bytes(elf.raw))
    assert_consistent(image)
    assert len(image.segments) == len(parse_elf(hello_bytes).segments) - 1


# ---- fuzzing ---------------------------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x1000, 0x10000, 1 << 31, 1 << 47, (1 << 64) - 1]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three mutations, mostly aimed at the ELF header and program headers."""
    out = bytearray(data)
    headers_end = EHDR_SIZE + PHDR_SIZE * struct.unpack_from("<H", data, 56)[0]
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.45:  # flip bits in the headers
            pos = rng.randrange(min(headers_end, len(out)) or 1)
            if pos < len(out):
                out[pos] ^= 1 << rng.randrange(8)
        elif kind < 0.65:  # an interesting value in an aligned header field
            pos = rng.randrange(0, max(headers_end - 8, 1), 4)
            width = rng.choice([2, 4, 8])
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            if pos + width <= len(out):
                out[pos : pos + width] = value.to_bytes(width, "little")
        elif kind < 0.75:  # a random byte anywhere
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind < 0.88:  # truncate
            del out[rng.randrange(len(out) + 1) :]
        else:  # insert random bytes
            pos = rng.randrange(len(out) + 1)
            out[pos:pos] = rng.randbytes(rng.randint(1, 64))
    return bytes(out)


def test_fuzz_mutated_hello(hello_bytes):
    """Every mutant either parses into a consistent image or raises ElfError."""
    rng = random.Random(0x0B1D6E)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(400):
        mutant = _mutate(rng, hello_bytes)
        try:
            image = parse_elf(mutant, name="mutant.elf")
        except ElfError as exc:
            assert exc.args[0].startswith("mutant.elf: ")
            outcomes["refused"] += 1
        else:
            assert_consistent(image)
            outcomes["parsed"] += 1
    assert outcomes["parsed"] >= 20 and outcomes["refused"] >= 100, outcomes


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(tail=st.binary(max_size=600))
def test_fuzz_garbage_after_elf_ident(tail):
    """Random bytes behind a valid 64-bit little-endian e_ident reach pyelftools."""
    data = b"\x7fELF\x02\x01\x01" + bytes(9) + tail
    try:
        image = parse_elf(data, name="garbage.elf")
    except ElfError:
        return
    assert_consistent(image)
