"""The plan: which instructions move out of line (the sites), under the straight-line rule.

A site's core is what must go: the instruction(s) a hidden PKRU writer's bytes overlap,
or (with io_routines) one `in al, dx` / `out dx, al`. Cores that overlap merge; a site
shorter than JMP_LEN grows, instruction by instruction, first backwards, then forwards,
absorbing a neighbouring site it reaches.

Invariants (checked before and after growing; a violation refuses the binary):
  - A site is a run of whole instructions [lo, hi] of one region's sweep, at least
    JMP_LEN bytes long once planned; sites are disjoint.
  - It is straight-line: its live instructions (up to and including the first exit, a
    ret or jmp) hold no branch and no undecodable byte, and each lies in file bytes of
    one segment, each instruction's bytes right after the previous one's in the file.
  - No possible jump target (sweep.py) lies strictly inside it, and no address the
    code reads as data lies at or inside it.
  - An aligned wrpkru/xrstor/xrstors is never a core: the program itself writes PKRU.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from underbridge.bridge.rewrite.encoder import JMP_LEN
from underbridge.bridge.rewrite.sweep import _PORT_IO, _Insn, _Swept
from underbridge.bridge.scan import Finding


@dataclass(eq=False)
class _Site:
    region: int
    lo: int
    hi: int
    why: list[str]
    io: set[int] = field(default_factory=set)  # instruction indices to become calls


class _Planner(_Swept):
    """The second layer of _Program: finding the cores, and planning sites around them."""

    # -- what must move -------------------------------------------------------------

    def locate(self, vaddr: int) -> int:
        for index, (low, high) in enumerate(self.ranges):
            if low <= vaddr < high:
                return index
        raise AssertionError(f"{vaddr:#x} is not in executable memory")

    def core_of_finding(self, finding: Finding) -> _Site:
        what = f"{finding.kind} at {finding.vaddr:#x}"
        if finding.aligned:
            raise self.refuse(
                f"{what} is an aligned instruction: the program itself writes PKRU; no "
                "rewrite can keep its meaning",
                hint="remove the instruction; PKRU changes only through a gate",
            )
        region = self.locate(finding.vaddr)
        starts = self.starts[region]
        lo = bisect_right(starts, finding.vaddr) - 1
        hi = bisect_right(starts, finding.vaddr + len(finding.encoding) - 1) - 1
        return _Site(region, lo, hi, [f"{what} (hidden)"])

    def io_cores(self) -> list[_Site]:
        cores = []
        for region, sweep in enumerate(self.sweeps):
            for index, lite in enumerate(sweep.lite):
                if lite.mnemonic.split()[-1] not in _PORT_IO:
                    continue
                insn = sweep[index]
                if insn.raw not in (b"\xec", b"\xee"):
                    raise self.refuse(
                        f"port I/O `{insn.mnemonic} {insn.op_str}` at {insn.vaddr:#x}: "
                        "only `in al, dx` and `out dx, al` become calls of the kernel's "
                        "checked routines (inb, outb); this form has none",
                        hint="do port I/O one byte at a time through DX and AL",
                    )
                cores.append(_Site(region, index, index, [str(insn)], {index}))
        return cores

    # -- planning sites ---------------------------------------------------------------

    def plan(self, cores: list[_Site]) -> list[_Site]:
        self.targets, data_refs = self._collect_targets()
        self.sorted_targets, self.sorted_refs = sorted(self.targets), sorted(data_refs)
        by_region: dict[int, list[_Site]] = {}
        for core in cores:
            by_region.setdefault(core.region, []).append(core)
        sites: list[_Site] = []
        for region in sorted(by_region):
            pending = deque(_merge(sorted(by_region[region], key=lambda c: c.lo)))
            done: list[_Site] = []
            while pending:
                site = pending.popleft()
                self._check(site)
                self._grow(site, done, pending)
                self._check(site)
                done.append(site)
            sites += done
        return sites

    def _grow(self, site: _Site, done: list[_Site], pending: deque[_Site]) -> None:
        sweep = self.sweeps[site.region]
        while sweep[site.hi].end - sweep[site.lo].vaddr < JMP_LEN:
            if self._can_prepend(site):
                if done and done[-1].hi == site.lo - 1:
                    _absorb(site, done.pop())
                else:
                    site.lo -= 1
            elif self._can_append(site):
                if pending and pending[0].lo == site.hi + 1:
                    _absorb(site, pending.popleft())
                else:
                    site.hi += 1
            else:
                span = sweep[site.hi].end - sweep[site.lo].vaddr
                insns = "; ".join(str(i) for i in sweep[site.lo : site.hi + 1])
                raise self.refuse(
                    f"{', '.join(site.why)}: occurrence inside a {span}-byte instruction "
                    f"sequence too short to patch ({insns}); a jmp needs {JMP_LEN} bytes and "
                    "no neighbouring straight-line instruction can join it (a branch, a "
                    "jump target or a segment boundary is next to it)"
                )

    def _contiguous(self, first: _Insn, second: _Insn) -> bool:
        return (
            first.offset is not None
            and second.offset is not None
            and first.offset + len(first.raw) == second.offset
        )

    def _can_prepend(self, site: _Site) -> bool:
        sweep = self.sweeps[site.region]
        if site.lo == 0:
            return False
        before, first = sweep[site.lo - 1], sweep[site.lo]
        return (
            before.flow == "next"
            and self._contiguous(before, first)
            and first.vaddr not in self.targets
            and self.data_ref_in(before.vaddr, first.end) is None
        )

    def _can_append(self, site: _Site) -> bool:
        sweep = self.sweeps[site.region]
        if site.hi + 1 >= len(sweep):
            return False
        last, after = sweep[site.hi], sweep[site.hi + 1]
        exited = any(i.flow == "exit" for i in sweep[site.lo : site.hi + 1])
        return (
            (exited or after.flow in ("next", "exit"))
            and self._contiguous(last, after)
            and after.vaddr not in self.targets
            and self.data_ref_in(after.vaddr, after.end) is None
        )

    def _check(self, site: _Site) -> None:
        sweep = self.sweeps[site.region]
        insns = sweep[site.lo : site.hi + 1]
        start, end = insns[0].vaddr, insns[-1].end
        what = ", ".join(site.why)
        for insn in _live(insns):
            if insn.flow == "data":
                raise self.refuse(
                    f"{what} lies in bytes the disassembler cannot decode ({insn}): data in "
                    "an executable section? There is no instruction to re-encode"
                )
            if insn.flow == "branch":
                raise self.refuse(
                    f"{what}: the occurrence involves `{insn}`, a branch whose meaning "
                    "depends on where it is; it cannot move to a trampoline"
                )
            if insn.offset is None:
                raise self.refuse(
                    f"{what}: `{insn}` is not backed by file bytes of one "
                    "segment, so it cannot be patched"
                )
        target = self.target_inside(start, end)
        if target is not None:
            raise self.refuse(
                f"{what}: {target:#x}, a possible jump target, lies strictly inside the "
                f"range to patch [{start:#x}, {end:#x}) ({'; '.join(map(str, insns))}); "
                "a jmp there would land in the middle of the patch"
            )
        ref = self.data_ref_in(start, end)
        if ref is not None:
            raise self.refuse(
                f"{what}: the program reads {ref:#x}, inside the range to patch "
                f"[{start:#x}, {end:#x}), as data"
            )


def _merge(cores: list[_Site]) -> list[_Site]:
    merged: list[_Site] = []
    for core in cores:
        if merged and core.lo <= merged[-1].hi:
            _absorb(merged[-1], core)
        else:
            merged.append(core)
    return merged


def _absorb(site: _Site, other: _Site) -> None:
    site.lo, site.hi = min(site.lo, other.lo), max(site.hi, other.hi)
    site.why += [w for w in other.why if w not in site.why]
    site.io |= other.io


def _live(insns: Sequence[_Insn]) -> list[_Insn]:
    """The instructions that run: up to and including the first exit."""
    for index, insn in enumerate(insns):
        if insn.flow == "exit":
            return list(insns[: index + 1])
    return list(insns)
