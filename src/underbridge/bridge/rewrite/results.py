"""What the rewriter promises its callers: the result, the refusals, the limits.

Public (re-exported by the package): RewriteRefused, CodeTooLarge, MAX_CODE_BYTES,
MAX_SITES, check_code_size, Change, Rewritten.

Invariants:
  - A binary is refused before any work past its limits: check_code_size (MAX_CODE_BYTES
    of executable pages, as mapped) comes first, then the count of spots (MAX_SITES).
  - RewriteRefused is a UserError: its message names the binary, the spot and the
    reason, with a hint; it is the only exception the rewriter raises for a binary the
    loader accepts.
  - A Change's `patch` is exactly as long as its `original` (the site's bytes): `jmp
    rel32` to `trampoline`, then int3.
"""

from __future__ import annotations

from dataclasses import dataclass

from underbridge.bridge.scan import code_regions
from underbridge.elf.image import ElfImage
from underbridge.errors import UserError


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
            hint="run it in user space, or split it into smaller servers",
        )


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
