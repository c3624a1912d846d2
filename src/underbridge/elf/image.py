"""ELF parsing: a guest binary's bytes into a validated ElfImage (entry point, segments).

Who may call: anyone; this module maps nothing (the kernel's loader, kernel/loader.py,
places an image's segments in an address space), and imports nothing of underbridge but
its errors, so the bridge (scanner, rewriter) and the kernel both parse with it.

Parsing (`parse_elf`) accepts only static x86-64 executables and raises nothing but
ElfError on any other input, however malformed: pyelftools only decodes the ELF header
and program headers, and every exception it raises on garbage is translated. All
checks run on plain integers afterwards, outside that translation, so a bug in them
is never disguised as a bad file.

Invariants of a returned ElfImage:
  - segments is non-empty, sorted by vaddr, and no two segments share a 4 KiB page;
  - every segment lies in [MIN_VADDR, USER_END) and has 0 < memsz, len(data) <= memsz
    (bytes past len(data) are zero), and the total memsz is at most MAX_IMAGE_BYTES;
  - no segment is both writable and executable: code is never writable;
  - entry lies inside an executable segment.
Non-PT_LOAD headers other than PT_INTERP/PT_DYNAMIC (PT_GNU_STACK, PT_NOTE, ...) and
empty PT_LOADs (memsz 0) are ignored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

from elftools.elf.elffile import ELFFile

from underbridge.errors import ElfError

PAGE_SIZE = 0x1000
MIN_VADDR = 0x10000  # page zero and the rest of the first 64 KiB stay unmapped
USER_END = 1 << 47  # end (exclusive) of the lower canonical half
MAX_IMAGE_BYTES = 256 << 20  # total memsz cap, far above any guest we build

PF_X = 0x1
PF_W = 0x2

_ELF_HEADER_SIZE = 64
_PHDR_SIZE = 56
_MAX_PHNUM = 256  # real executables have < 20; PN_XNUM (0xffff) extension refused
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1

_T = TypeVar("_T")

_LINK_HINT = "build it with underbridge's toolchain (gcc -static -no-pie -nostdlib)"


@dataclass(frozen=True, slots=True)
class Segment:
    """One PT_LOAD segment: `data` (the file bytes) followed by zeros up to `memsz`.

    `file_offset` is where `data` starts in the file (p_offset), for reports that name
    file positions (the scanner, bridge/scan.py).
    """

    vaddr: int
    memsz: int
    data: bytes
    writable: bool
    executable: bool
    file_offset: int

    @property
    def end(self) -> int:
        """First address past the segment."""
        return self.vaddr + self.memsz


@dataclass(frozen=True, slots=True)
class ElfImage:
    """A validated static executable: entry point and loadable segments (see module doc)."""

    entry: int
    segments: tuple[Segment, ...]
    phdr_vaddr: int = 0  # where a loaded segment maps the program headers, else 0
    phentsize: int = 0
    phnum: int = 0

    @property
    def end(self) -> int:
        """First address past the highest segment (where a heap may start)."""
        return max(segment.end for segment in self.segments)


def _phdr_vaddr(segments: tuple[Segment, ...], header: _RawHeader) -> int:
    """The virtual address of the program headers, if a segment's file bytes hold them."""
    size = header.e_phentsize * header.e_phnum
    for segment in segments:
        start = header.e_phoff - segment.file_offset
        if start >= 0 and start + size <= len(segment.data):
            return segment.vaddr + start
    return 0


@dataclass(frozen=True, slots=True)
class _RawHeader:
    e_type: str | int
    e_machine: str | int
    e_entry: int
    e_phoff: int
    e_phentsize: int
    e_phnum: int


@dataclass(frozen=True, slots=True)
class _RawPhdr:
    index: int
    p_type: str | int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int


# ---- parsing -----------------------------------------------------------------------


def parse_elf(data: bytes, *, name: str = "<elf>") -> ElfImage:
    """Validate a static x86-64 executable and return its entry point and segments.

    Raises ElfError (naming `name` and the problem) for anything else.
    """
    data = bytes(data)
    _check_ident(data, name)
    elf = _decode(name, lambda: ELFFile(io.BytesIO(data)))
    header = _decode(name, lambda: _read_header(elf))
    _check_header(header, len(data), name)
    phdrs = _decode(name, lambda: list(_read_phdrs(elf, data, header)))
    segments = tuple(sorted(_load_segments(phdrs, data, name), key=lambda seg: seg.vaddr))
    _check_image(segments, header.e_entry, name)
    return ElfImage(
        entry=header.e_entry,
        segments=segments,
        phdr_vaddr=_phdr_vaddr(segments, header),
        phentsize=header.e_phentsize,
        phnum=header.e_phnum,
    )


def _decode(name: str, step: Callable[[], _T]) -> _T:
    """Run a pyelftools step; any exception it raises means the file is malformed."""
    try:
        return step()
    except Exception as exc:  # pyelftools raises a zoo of types on garbage
        raise _error(
            name, f"malformed ELF structure ({type(exc).__name__}: {exc})".rstrip()
        ) from exc


def _read_header(elf: ELFFile) -> _RawHeader:
    return _RawHeader(
        e_type=elf["e_type"],
        e_machine=elf["e_machine"],
        e_entry=int(elf["e_entry"]),
        e_phoff=int(elf["e_phoff"]),
        e_phentsize=int(elf["e_phentsize"]),
        e_phnum=int(elf["e_phnum"]),
    )


def _read_phdrs(elf: ELFFile, data: bytes, header: _RawHeader) -> Iterator[_RawPhdr]:
    """Decode the program header table with pyelftools' own Elf_Phdr struct.

    (ELFFile.iter_segments would also interpret PT_DYNAMIC, reading section headers.)
    """
    for index in range(header.e_phnum):
        start = header.e_phoff + index * header.e_phentsize
        raw = elf.structs.Elf_Phdr.parse(data[start : start + _PHDR_SIZE])
        yield _RawPhdr(
            index=index,
            p_type=raw["p_type"],
            p_flags=int(raw["p_flags"]),
            p_offset=int(raw["p_offset"]),
            p_vaddr=int(raw["p_vaddr"]),
            p_filesz=int(raw["p_filesz"]),
            p_memsz=int(raw["p_memsz"]),
        )


# ---- checks ------------------------------------------------------------------------


def _error(name: str, problem: str, hint: str = _LINK_HINT) -> ElfError:
    return ElfError(f"{name}: {problem}", hint=hint)


def _check_ident(data: bytes, name: str) -> None:
    if len(data) < _ELF_HEADER_SIZE:
        raise _error(name, f"truncated: {len(data)} bytes, less than an ELF header")
    if data[:4] != _ELF_MAGIC:
        raise _error(name, f"not an ELF file (starts with {data[:4]!r})")
    if data[4] != _ELFCLASS64:
        raise _error(name, "not a 64-bit ELF file (EI_CLASS is not ELFCLASS64)")
    if data[5] != _ELFDATA2LSB:
        raise _error(name, "not a little-endian ELF file (EI_DATA is not ELFDATA2LSB)")


def _check_header(header: _RawHeader, file_size: int, name: str) -> None:
    if header.e_machine != "EM_X86_64":
        raise _error(name, f"machine is {header.e_machine}, not x86-64 (EM_X86_64)")
    if header.e_type == "ET_DYN":
        raise _error(
            name,
            "position-independent executable or shared object (ET_DYN)",
            hint="link it as a static, non-PIE executable: gcc -static -no-pie",
        )
    if header.e_type != "ET_EXEC":
        raise _error(name, f"not an executable (e_type is {header.e_type})")
    if header.e_phentsize != _PHDR_SIZE:
        raise _error(name, f"program header size is {header.e_phentsize}, not {_PHDR_SIZE}")
    if not 0 < header.e_phnum <= _MAX_PHNUM:
        raise _error(name, f"{header.e_phnum} program headers (need 1 to {_MAX_PHNUM})")
    if header.e_phoff + header.e_phnum * _PHDR_SIZE > file_size:
        raise _error(name, "truncated: the program header table extends past the end")


def _load_segments(phdrs: list[_RawPhdr], data: bytes, name: str) -> Iterator[Segment]:
    """Validate each program header; yield the non-empty PT_LOAD segments."""
    for phdr in phdrs:
        if phdr.p_type == "PT_INTERP":
            raise _error(name, "dynamically linked (has PT_INTERP): only static executables")
        if phdr.p_type == "PT_DYNAMIC":
            raise _error(name, "dynamically linked (has PT_DYNAMIC): only static executables")
        if phdr.p_type == "PT_LOAD" and phdr.p_memsz > 0:
            _check_load(phdr, len(data), name)
            yield Segment(
                vaddr=phdr.p_vaddr,
                memsz=phdr.p_memsz,
                data=data[phdr.p_offset : phdr.p_offset + phdr.p_filesz],
                writable=bool(phdr.p_flags & PF_W),
                executable=bool(phdr.p_flags & PF_X),
                file_offset=phdr.p_offset,
            )


def _check_load(phdr: _RawPhdr, file_size: int, name: str) -> None:
    where = f"PT_LOAD #{phdr.index} at {phdr.p_vaddr:#x}"
    if phdr.p_filesz > phdr.p_memsz:
        raise _error(name, f"{where}: filesz {phdr.p_filesz:#x} > memsz {phdr.p_memsz:#x}")
    if phdr.p_offset + phdr.p_filesz > file_size:
        raise _error(name, f"truncated: {where} extends past the end of the file")
    if phdr.p_vaddr % PAGE_SIZE != phdr.p_offset % PAGE_SIZE:
        raise _error(name, f"{where}: vaddr and file offset {phdr.p_offset:#x} differ mod 4096")
    if phdr.p_memsz > MAX_IMAGE_BYTES:
        raise _error(name, f"{where}: memsz {phdr.p_memsz:#x} exceeds {MAX_IMAGE_BYTES:#x}")
    if phdr.p_vaddr < MIN_VADDR or phdr.p_vaddr + phdr.p_memsz > USER_END:
        raise _error(
            name, f"{where}: outside user space [{MIN_VADDR:#x}, {USER_END:#x}) (kernel half?)"
        )
    if phdr.p_flags & PF_W and phdr.p_flags & PF_X:
        raise _error(name, f"{where}: both writable and executable; code is never writable")


def _check_image(segments: tuple[Segment, ...], entry: int, name: str) -> None:
    if not segments:
        raise _error(name, "no loadable (PT_LOAD) segment")
    if sum(seg.memsz for seg in segments) > MAX_IMAGE_BYTES:
        raise _error(name, f"loadable segments total more than {MAX_IMAGE_BYTES:#x} bytes")
    for low, high in pairwise(segments):
        if page_down(high.vaddr) < page_up(low.end):
            raise _error(
                name, f"segments at {low.vaddr:#x} and {high.vaddr:#x} overlap (share a page)"
            )
    if not any(seg.executable and seg.vaddr <= entry < seg.end for seg in segments):
        raise _error(name, f"entry point {entry:#x} is not inside an executable segment")


def page_down(address: int) -> int:
    """The start of the page holding `address`."""
    return address & ~(PAGE_SIZE - 1)


def page_up(address: int) -> int:
    """`address` rounded up to a page boundary."""
    return page_down(address + PAGE_SIZE - 1)
