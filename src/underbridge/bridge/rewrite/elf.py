"""The new file: the trampolines' segment added, then the result verified.

The trampolines go into a NEW PT_LOAD, R+X, at `vaddr` (a page boundary after every
segment), its file bytes page-aligned at the end of the file. The program header table
is copied after them with the new entry added after the last PT_LOAD and PT_PHDR
dropped; e_phoff and e_phnum follow.

Invariants:
  - _with_segment changes no byte of the file it is given but e_phoff and e_phnum; it
    only appends (padding, the trampolines, the new table). The section headers stay
    where they were. (The sites' patches were written before, by emit.py.)
  - _verify refuses (RewriteRefused: a rewriter bug) a result the loader would not
    accept, or in which the scanner still finds a PKRU writer, or (when port I/O was
    rewritten) a port I/O instruction.
"""

from __future__ import annotations

import struct

from underbridge.bridge.rewrite.results import RewriteRefused
from underbridge.bridge.rewrite.sweep import _PORT_IO
from underbridge.bridge.scan import scan_elf
from underbridge.elf.image import PAGE_SIZE, parse_elf

_PT_LOAD, _PT_PHDR, _PF_R, _PF_X = 1, 6, 4, 1
_PHDR = struct.Struct("<IIQQQQQQ")
_E_PHOFF, _E_PHNUM = 0x20, 0x38


def _page_up(address: int) -> int:
    return -(-address // PAGE_SIZE) * PAGE_SIZE


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
        raise RewriteRefused(
            f"{name}: the rewritten code still holds PKRU writers ({found})",
            hint="a rewriter bug: report it with the binary",
        )
    if io_rewritten:
        io_left = [f for f in report.privileged if f.kind.removeprefix("privileged:") in _PORT_IO]
        if io_left:
            raise RewriteRefused(
                f"{name}: port I/O remains at {io_left[0].vaddr:#x} after rewriting",
                hint="a rewriter bug: report it with the binary",
            )
