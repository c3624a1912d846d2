"""Vetting a server binary for kernel space (rewrite, then scan), cached by content.

Placing the same server twice must not pay the rewriter's capstone sweeps twice: the
outcome of `vet` depends only on its inputs, so it is cached under a sha256 of them,
in this process and on disk under <cache>/admission/ (like guest builds, toolchain.py).

Invariants:
  - The key covers everything that decides the output: a schema tag, the vetting code
    itself (the sources of the rewriter, scanner, port-I/O routines, ELF loader and the
    region check, so editing any of them invalidates every entry), the input ELF, the
    server's name and base, the addresses of the port-I/O routines and whether
    rewriting was asked for.
  - Only an accepted binary is cached; a refused one is vetted again each time, so its
    report is always the rewriter's and scanner's own.
  - The scan, the check that decides whether code may run in kernel space, runs at
    least once per process on every binary admitted: an entry read from disk is scanned
    again before it is used (the scan is about a tenth of the rewrite's cost); only an
    entry this process vetted itself is reused without a scan.
  - A file appears in the disk cache only by an atomic rename of a complete file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite import RewriteRefused, rewrite_elf
from underbridge.bridge.scan import Finding, scan_elf
from underbridge.guestbuild import toolchain

_SCHEMA = b"underbridge-admission-v1"
_MEMO_ENTRIES = 64
_memo: OrderedDict[str, bytes] = OrderedDict()  # key -> vetted ELF (this process vetted it)
_VETTING_SOURCES = (
    "kernel/ipc/domains.py",  # the region check behind `fits`
    "kernel/ipc/kernel_space.py",  # the region's size
    "bridge/rewrite",  # a package: every module in it
    "bridge/scan.py",
    "bridge/iocall.py",
    "elf/image.py",
    "bridge/admission.py",
)


@functools.cache
def vetting_version() -> str:
    """A hash of the code whose output is cached (any edit gives new keys)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for relative in _VETTING_SOURCES:
        path = package / relative
        for source in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(source.read_bytes())
    return digest.hexdigest()


def cache_key(
    elf: bytes, *, name: str, io_routines: IoRoutines | None, rewrite: bool, base: int = 0
) -> str:
    digest = hashlib.sha256(_SCHEMA)
    routines = b"" if io_routines is None else f"{io_routines.inb}:{io_routines.outb}".encode()
    for part in (
        vetting_version().encode(),
        elf,
        name.encode(),
        routines,
        b"rewrite" if rewrite else b"keep",
        base.to_bytes(8, "little"),
    ):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def vet(
    elf: bytes,
    *,
    name: str,
    io_routines: IoRoutines | None,
    rewrite: bool = True,
    base: int = 0,
    fits: Callable[[bytes], bool] = lambda _elf: True,
) -> tuple[bytes, tuple[Finding, ...]]:
    """The binary to place in kernel space and the PKRU writers it still holds.

    The server is refused if the findings are not empty. rewrite=False keeps the binary
    as built (it is still scanned). The rewritten binary is used only if `fits` accepts
    it, a check that may depend on `base` (the server's region) and nothing else.
    Raises ElfError for a file the loader refuses.
    """
    key = cache_key(elf, name=name, io_routines=io_routines, rewrite=rewrite, base=base)
    vetted = _memo.get(key)
    if vetted is not None:
        _memo.move_to_end(key)
        return vetted, ()
    path = cache_dir() / f"{key}.elf"
    cached = _read(path)
    if cached is None and rewrite:
        with contextlib.suppress(RewriteRefused):  # verified below either way
            rewritten = rewrite_elf(elf, name=name, io_routines=io_routines).data
            if fits(rewritten):
                elf = rewritten
    elif cached is not None:
        elf = cached
    writers = scan_elf(elf, name=name).pkru_writers
    if not writers:
        _remember(key, elf)
        if cached is None:
            _write(path, elf)
    return elf, writers


def cache_dir() -> Path:
    return toolchain.cache_root() / "admission"


def forget() -> None:
    """Empty the in-process cache (tests; the disk cache stays)."""
    _memo.clear()


def _remember(key: str, elf: bytes) -> None:
    _memo[key] = elf
    while len(_memo) > _MEMO_ENTRIES:
        _memo.popitem(last=False)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(scratch, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(scratch)
