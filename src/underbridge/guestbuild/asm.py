"""Assemble small x86-64 snippets with GNU as (binutils), Intel syntax.

Used for machine code the kernel generates (gates, stubs) and by tests. GNU as is the
assembler: keystone silently encodes absolute [imm32] operands as RIP-relative.
Results are memoised per process by source text; an assembly error raises
ToolchainError with the assembler's message.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

from underbridge.errors import ToolchainError


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(
            f"{name} not found on PATH", hint="install it: apt-get install binutils"
        )
    return path


@functools.lru_cache(maxsize=4096)
def assemble(source: str, *, origin: int = 0) -> bytes:
    """Machine code for `source` (Intel syntax), as if placed at virtual address `origin`."""
    with tempfile.TemporaryDirectory(prefix="ub-asm-") as tmp:
        work = Path(tmp)
        (work / "snippet.s").write_text(".intel_syntax noprefix\n.text\n" + source + "\n")
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=False)
        result = run([_tool("as"), "--64", "-o", str(work / "snippet.o"), str(work / "snippet.s")])
        if result.returncode != 0:
            raise ToolchainError(f"assembly failed:\n{result.stderr.strip()}")
        result = run(
            [
                _tool("ld"),
                "-o",
                str(work / "snippet.elf"),
                f"-Ttext={origin:#x}",
                "--oformat=binary",
                "-e",
                "0",
                str(work / "snippet.o"),
            ]
        )
        if result.returncode != 0:
            raise ToolchainError(f"linking the snippet failed:\n{result.stderr.strip()}")
        return (work / "snippet.elf").read_bytes()
