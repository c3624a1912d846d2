"""The rewriter of privilege deprivation: hidden PKRU writers out, port I/O into calls.

The scanner (bridge/scan.py) refuses a server whose executable bytes hold `wrpkru`,
XRSTOR or XRSTORS anywhere, even inside another instruction. Ordinary compiled code
holds such bytes by accident (a constant 0x90ef010f, an array offset). ERIM (Vahldiek-
Oberwagner et al., USENIX Security 2019, section 4.4) rewrites those spots into
equivalent code without the bytes; this package does that for static x86-64 ELF files,
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

MODULES (each states its own invariants; read them in this order)
  api.py      rewrite_elf: the pipeline, top to bottom
  results.py  what callers get: Rewritten, Change, RewriteRefused, CodeTooLarge, limits
  sweep.py    the scanner's sweep as instructions; where control may arrive (targets)
  plan.py     the sites: cores, growing to 5 bytes, the straight-line rule
  emit.py     patches and trampolines; choosing each instruction's form
  forms.py    the forms themselves, and what "clean" means
  layout.py   reading an instruction's encoding: fields, registers, memory operand
  encoder.py  the hand-written x86-64 encoder the forms are built with
  elf.py      the new segment and program header table; verifying the result
  A rewrite is one _Program (emit.py), built in three layers: _Swept (sweep.py), then
  _Planner (plan.py), then _Program. Names with a leading underscore are the package's
  own: only the names in __all__ are public.
"""

from __future__ import annotations

from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite.api import rewrite_elf
from underbridge.bridge.rewrite.encoder import JMP_LEN
from underbridge.bridge.rewrite.results import (
    MAX_CODE_BYTES,
    MAX_SITES,
    Change,
    CodeTooLarge,
    RewriteRefused,
    Rewritten,
    check_code_size,
)

__all__ = [
    "JMP_LEN",
    "MAX_CODE_BYTES",
    "MAX_SITES",
    "Change",
    "CodeTooLarge",
    "IoRoutines",
    "RewriteRefused",
    "Rewritten",
    "check_code_size",
    "rewrite_elf",
]
