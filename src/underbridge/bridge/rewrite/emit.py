"""Placing the sites: each site's patch, and its trampoline in the new segment.

A site's bytes become `jmp rel32` to its trampoline, then int3 up to its end. The
trampoline holds, per live instruction, the first clean form of it (forms.py), then
`jmp` back to the first byte after the site (unless the site ends with an exit), then
one int3.

Invariants:
  - Trampolines are laid out in the order of the sites' addresses, from the new
    segment's start: the first page boundary after the highest segment's end.
  - Every byte emitted is clean (forms._clean), and so is every junction: between two
    pieces of a trampoline, and the patch with the two original bytes on each side of
    it. When a junction is not, nops go before the piece (int3s before a trampoline),
    fewer than _SHIFTS of them, else the binary is refused.
  - The output depends only on the input: random draws are seeded by the instruction's
    address and the address of its form.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from underbridge.bridge.rewrite.elf import _page_up, _with_segment
from underbridge.bridge.rewrite.encoder import _INT3, _NOP, JMP_LEN, _branch, _NoForm
from underbridge.bridge.rewrite.forms import (
    _clean,
    _copy,
    _disp_split,
    _imm_split,
    _imm_via_scratch,
    _push_split,
)
from underbridge.bridge.rewrite.plan import _live, _Planner, _Site
from underbridge.bridge.rewrite.results import Change
from underbridge.bridge.rewrite.sweep import _Insn

_SHIFTS = 16  # nop shifts tried for an instruction, trampoline starts tried for a site


class _Program(_Planner):
    """One rewrite of one program: its code and targets (_Swept), its plan (_Planner),
    and the emission of patches and trampolines."""

    # -- emitting -------------------------------------------------------------------------

    def emit(self, sites: list[_Site]) -> tuple[bytes, list[Change]]:
        out = bytearray(self.data)
        segment_vaddr = _page_up(max(s.end for s in self.image.segments))
        blob = bytearray()
        changes = []
        for site in sorted(sites, key=lambda s: self.sweeps[s.region][s.lo].vaddr):
            change = self._place_site(site, out, segment_vaddr, blob)
            changes.append(change)
        return _with_segment(out, segment_vaddr, bytes(blob)), changes

    def _place_site(
        self, site: _Site, out: bytearray, segment_vaddr: int, blob: bytearray
    ) -> Change:
        insns = self.sweeps[site.region][site.lo : site.hi + 1]
        start, end = insns[0].vaddr, insns[-1].end
        offset = insns[0].offset
        assert offset is not None
        for shift in range(_SHIFTS):
            at = segment_vaddr + len(blob) + shift
            code, how = self._trampoline(site, insns, at)
            try:
                patch = _branch(0xE9, start, at) + bytes([_INT3]) * (end - start - JMP_LEN)
            except _NoForm as exc:
                raise self.refuse(f"{', '.join(site.why)}: {exc}") from None
            window = (
                bytes(out[max(offset - 2, 0) : offset])
                + patch
                + bytes(out[offset + len(patch) : offset + len(patch) + 2])
            )
            if _clean(window):
                break
        else:
            raise self.refuse(
                f"{', '.join(site.why)}: no trampoline address gives a clean jmp at {start:#x}"
            )
        original = bytes(out[offset : offset + len(patch)])
        out[offset : offset + len(patch)] = patch
        blob += bytes([_INT3]) * shift + code
        return Change(start, offset, original, patch, at, code, tuple(site.why), tuple(how))

    def _trampoline(self, site: _Site, insns: Sequence[_Insn], at: int) -> tuple[bytes, list[str]]:
        buf = bytearray()
        how = []
        live = _live(insns)
        for index, insn in enumerate(live, start=site.lo):
            build = self._forms(insn, replace_io=index in site.io)
            label = self._append(buf, at, build, f"{', '.join(site.why)}: `{insn}`")
            how.append(f"{insn} -> {label}")
        how += [f"{insn} -> int3 (dead after the site's exit)" for insn in insns[len(live) :]]
        if live[-1].flow != "exit":
            back = insns[-1].end

            def jump_back(address: int) -> tuple[bytes, str]:
                return _branch(0xE9, address, back), "jmp back"

            self._append(buf, at, jump_back, f"{', '.join(site.why)}: the jmp back")
        buf.append(_INT3)
        return bytes(buf), how

    def _append(
        self, buf: bytearray, at: int, build: Callable[[int], tuple[bytes, str]], what: str
    ) -> str:
        """Append `build(address)`'s bytes to buf, after nops if that makes them clean."""
        reason = "no clean encoding"
        for shift in range(_SHIFTS):
            address = at + len(buf) + shift
            try:
                piece, label = build(address)
            except _NoForm as exc:
                reason = str(exc)
                continue
            padded = bytes([_NOP]) * shift + piece
            if _clean(piece) and _clean(bytes(buf[-2:]) + padded):
                buf += padded
                return label
        raise self.refuse(f"{what}: {reason}")

    # -- equivalent forms of one instruction ------------------------------------------------

    def _forms(self, insn: _Insn, *, replace_io: bool) -> Callable[[int], tuple[bytes, str]]:
        assert insn.cs is not None
        if replace_io:
            assert self.io is not None
            routine, label = (
                (self.io.inb, "call inb") if insn.raw == b"\xec" else (self.io.outb, "call outb")
            )
            return lambda at: (_branch(0xE8, at, routine), label)
        if insn.flow == "exit" and insn.target is not None:
            target = insn.target
            return lambda at: (_branch(0xE9, at, target), "jmp re-targeted")

        def build(at: int) -> tuple[bytes, str]:
            copied = _copy(insn, at)
            if copied is not None and _clean(copied):
                return copied, "copied" if copied == insn.raw else "copied, RIP disp re-based"
            if insn.flow == "exit":  # code after a ret or jmp would never run
                raise _NoForm("a ret or indirect jmp can only be copied")
            rng = random.Random(insn.vaddr * 131 + at)
            for strategy in (_imm_split, _push_split, _imm_via_scratch, _disp_split):
                result = strategy(insn, at, rng)
                if result is not None:
                    return result
            raise _NoForm(
                "no equivalent form without the forbidden bytes (an immediate or "
                "displacement only this instruction can hold?)"
            )

        return build
