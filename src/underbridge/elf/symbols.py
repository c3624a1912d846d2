"""A guest binary's function symbols, for naming code addresses (the profiler).

Who may call: anyone; this module maps and runs nothing. It reads the ELF symbol table
(.symtab) with pyelftools and answers "which function holds this address".

What counts as a function: every FUNC symbol, and every NOTYPE symbol defined in an
executable section (hand-written assembly such as crt0's `_start` often has no type).
Several names at one address (aliases: musl's weak `memcpy` and its strong twin) keep
one: a global name before a local one, then the shortest, then the first by name.

Invariants:
  - `function_at` is deterministic: the same binary names the same address the same way.
  - An address is named only if it lies in a symbol's [value, value + size), or, for a
    symbol of size 0 (assembly without `.size`), between it and the next symbol. An
    address past every sized function, such as the rewriter's trampolines (a segment
    appended after the linked image, bridge/rewrite), has no name: None.
  - A binary without a symbol table (stripped) names nothing; it is not an error.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from underbridge.errors import ElfError

_SHF_EXECINSTR = 0x4


@dataclass(frozen=True, slots=True)
class FunctionSymbols:
    """The functions of one binary, sorted by address."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]  # exclusive; for a size-0 symbol, the next symbol's start
    names: tuple[str, ...]

    def function_at(self, address: int) -> str | None:
        """The name of the function holding `address`, or None."""
        index = bisect.bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.ends[index]:
            return self.names[index]
        return None

    def __len__(self) -> int:
        return len(self.names)


def _executable_sections(elf: ELFFile) -> set[int]:
    return {
        index
        for index, section in enumerate(elf.iter_sections())
        if section["sh_flags"] & _SHF_EXECINSTR
    }


def _candidates(elf: ELFFile) -> dict[int, tuple[tuple[int, int, str], int]]:
    """address -> (preference key, size) of the preferred name there."""
    table = elf.get_section_by_name(".symtab")
    if not isinstance(table, SymbolTableSection):
        return {}
    code = _executable_sections(elf)
    best: dict[int, tuple[tuple[int, int, str], int]] = {}
    for symbol in table.iter_symbols():
        kind, shndx, name = symbol["st_info"]["type"], symbol["st_shndx"], symbol.name
        if not name or name.startswith(".L") or not isinstance(shndx, int):
            continue
        if kind != "STT_FUNC" and not (kind == "STT_NOTYPE" and shndx in code):
            continue
        key = (0 if symbol["st_info"]["bind"] != "STB_LOCAL" else 1, len(name), name)
        address, size = int(symbol["st_value"]), int(symbol["st_size"])
        if address not in best or key < best[address][0]:
            best[address] = (key, size)
    return best


def function_symbols(data: bytes, *, name: str = "<elf>") -> FunctionSymbols:
    """The function symbols of the ELF file `data` (ElfError if it is not one)."""
    try:
        best = _candidates(ELFFile(io.BytesIO(data)))
    except (_PyElfError, ValueError, KeyError, IndexError, OSError) as error:
        raise ElfError(f"{name}: cannot read its symbol table ({error})") from None
    starts = sorted(best)
    ends = []
    for index, address in enumerate(starts):
        size = best[address][1]
        following = starts[index + 1] if index + 1 < len(starts) else address
        ends.append(address + size if size else following)
    names = tuple(best[address][0][2] for address in starts)
    return FunctionSymbols(tuple(starts), tuple(ends), names)
