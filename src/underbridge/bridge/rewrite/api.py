"""The rewriter's entry point: rewrite_elf, the whole pipeline top to bottom.

parse and check the limits (results.py) -> the scanner's sweep and findings
(bridge/scan.py) -> the cores of the sites (plan.py) -> the plan: sites grown to a
jmp's length under the straight-line rule (plan.py) -> trampolines and patches
(emit.py) -> the new file, verified (elf.py).

Invariant: what rewrite_elf returns has passed `_verify`: `parse_elf` accepts it, the
scanner finds no PKRU writer in it and, with `io_routines`, no port I/O. A binary with
nothing to patch is returned as it was, byte for byte.
"""

from __future__ import annotations

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite.elf import _verify
from underbridge.bridge.rewrite.emit import _Program
from underbridge.bridge.rewrite.results import (
    MAX_SITES,
    RewriteRefused,
    Rewritten,
    check_code_size,
)
from underbridge.bridge.scan import scan_image
from underbridge.elf.image import parse_elf


def rewrite_elf(data: bytes, *, name: str, io_routines: IoRoutines | None = None) -> Rewritten:
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
            hint="run it in user space, or change the source so the bytes vanish",
        )
    sites = program.plan(cores)
    result, changes = program.emit(sites)
    _verify(result, name, io_routines is not None)
    return Rewritten(result, tuple(changes))
