"""Running red-team rows: one row on its own stage, judged against its Expect.

A row PASSES only if the observed outcome is the expected one, the victim check passes,
and neither the attacker nor a partner printed a "LEAKED" or "broken" line (module doc
of underbridge.redteam). `run` runs the rows given, each on a fresh machine under
the row's design (its `mode`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from underbridge.bridge.scan import scan_elf, vmfunc_sites
from underbridge.elf.image import parse_elf
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.redteam import migration_rows
from underbridge.redteam.rows import ATTACKS
from underbridge.redteam.spec import (
    APP_BASE,
    ATTACK_BASE,
    BAD_WORDS,
    FAIL,
    PARTNER_BASE,
    PASS,
    AttackSpec,
    Expect,
    Partner,
)
from underbridge.redteam.stage import (
    Stage,
    attack_source,
    build_stage,
    domain_pkru,
    gate_targets,
    run_until,
    symbols_of,
    victim_problem,
)

if TYPE_CHECKING:
    from underbridge.kernel.ipc.underbridge import UnderbridgeIpc


@dataclass(frozen=True, slots=True)
class RowResult:
    spec: AttackSpec
    observed: str
    verdict: str
    attacker_output: str
    victim: str  # "" when the victim check passed, else what went wrong
    attacker: CapGroup | None  # None: the kernel refused to load it
    targets: dict[str, int] = field(default_factory=dict)  # as resolved for this row
    partner_output: str = ""  # the partner's console, if the row has one

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.spec.id,
            "attack": self.spec.attack,
            "expected": self.spec.expect.text,
            "observed": self.observed,
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True)
class RedTeamResult:
    rows: tuple[RowResult, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [row.to_json() for row in self.rows], "passed": self.passed}


MISSING = -1  # a target that never appeared (no fault field ever equals it)


def _matches(
    expect: Expect, attacker: CapGroup, reports: list[str], targets: dict[str, int], cpl: int
) -> bool:
    if expect.exception is not None and expect.reports and tuple(reports) != expect.reports:
        return False  # what it saw before it faulted
    if expect.exception is None:
        return (
            attacker.state is GroupState.EXITED
            and attacker.exit_status == 0
            and tuple(reports) == expect.reports
        )
    fault = attacker.fault
    if attacker.state is not GroupState.FAULTED or fault is None:
        return False

    def target(name: str | None) -> int | None:
        return None if name is None else targets.get(name, MISSING)

    wanted = (
        (expect.reason, fault.reason),
        (expect.access, fault.access),
        (target(expect.address), fault.address),
        (target(expect.rip), fault.rip),
        (target(expect.pkru), fault.pkru),
    )
    return (
        fault.mnemonic == expect.exception
        and fault.cpl == cpl
        and all(want is None or want == got for want, got in wanted)
        and (expect.instruction is None or fault.instruction.startswith(expect.instruction))
    )


def _found(elf: Path, finding: tuple[str, bool] | None) -> str:
    """The scanner's finding of this class and alignment in elf, described; '' if none."""
    if finding is None:
        return ""
    kind, aligned = finding
    for hit in scan_elf(elf).pkru_writers:
        if hit.kind == kind and hit.aligned == aligned:
            where = "aligned" if aligned else "inside " + " / ".join(map(str, hit.overlaps))
            return f"{kind} found at {hit.vaddr:#x}, {where}"
    return ""


def _stray_vmfunc(elf: Path) -> str:
    """Where the attacker's code holds a vmfunc (0F 01 D4, at any byte offset), described."""
    image = parse_elf(elf.read_bytes(), name=elf.stem)
    sites = [
        site
        for segment in image.segments
        if segment.executable
        for site in vmfunc_sites(segment.data, vaddr=segment.vaddr)
    ]
    return f"vmfunc found at {sites[0]:#x}" if sites else ""


def _lines(group: CapGroup) -> list[str]:
    return bytes(group.console).decode(errors="replace").splitlines()


def _note_partner_gate(stage: Stage, partner: CapGroup | None, targets: dict[str, int]) -> None:
    """Once the partner has connected as a client, publish its gate's targets and PKRU."""
    if partner is None or "partner_gate" in targets or not stage.gates:
        return
    ipc = cast("UnderbridgeIpc", stage.kernel.ipc)
    gate = next((g for g in ipc.gates() if g.conn.client is partner), None)
    if gate is not None:
        targets.update(gate_targets(stage.machine, gate, "partner_gate"))
        targets["partner_pkru"] = domain_pkru(stage.kernel.placement, partner)


def _settled(group: CapGroup) -> bool:
    """Has the partner ended, or is each of its threads blocked for good (or gone)?"""
    return not group.running or all(
        t.state in (ThreadState.BLOCKED, ThreadState.DEAD) for t in group.threads
    )


def _partner_said(partner: CapGroup) -> tuple[str, ...]:
    return tuple(
        line.removeprefix("victim: ") for line in _lines(partner) if line.startswith("victim: ")
    )


def _partner_problem(partner: CapGroup | None, wanted: Partner | None) -> str:
    """'' if the partner is alive and printed exactly its expected lines, else what not."""
    if partner is None or wanted is None:
        return ""
    problems = []
    if not partner.running:
        how = (
            partner.fault.describe()
            if partner.fault is not None
            else f"exited with status {partner.exit_status}"
        )
        problems.append(f"{partner.name} is gone ({how})")
    said = _partner_said(partner)
    if said != wanted.lines:
        problems.append(
            f"{partner.name} printed "
            + (" | ".join(said) or "nothing")
            + " instead of "
            + " | ".join(wanted.lines)
        )
    problems.extend(
        f"{partner.name}: {line}"
        for line in _lines(partner)
        if any(word in line for word in BAD_WORDS) and not line.startswith("victim: ")
    )
    return "; ".join(problems)


def _spawn(
    kernel: Kernel,
    elf: Path,
    program: str,
    args: tuple[str, ...],
    targets: dict[str, int],
    *,
    in_kernel: bool,
) -> CapGroup:
    argv = [program, *(word.format(**{k: f"{v:#x}" for k, v in targets.items()}) for word in args)]
    return kernel.spawn(elf, argv, name=program, in_kernel=in_kernel)


def run_row(index: int, spec: AttackSpec) -> RowResult:
    stage = build_stage(spec.mode)
    kernel = stage.kernel
    base = ATTACK_BASE + index * REGION_SIZE if spec.in_kernel else APP_BASE
    elf = build_program(attack_source(spec.program), base=base)
    targets = {
        **stage.targets,
        "attacker_window": base + REGION_SIZE // 4,
        **symbols_of(elf, spec.symbols, "attacker"),
    }
    partner = None
    partner_elf = None
    if spec.partner is not None:
        partner_elf = build_program(attack_source(spec.partner.program), base=PARTNER_BASE)
        targets.update(symbols_of(partner_elf, spec.partner.symbols, "partner"))

    def spawn_partner() -> CapGroup:
        assert spec.partner is not None and partner_elf is not None
        return _spawn(
            kernel,
            partner_elf,
            spec.partner.program,
            spec.partner.args,
            targets,
            in_kernel=stage.placed,
        )

    if spec.partner is not None and spec.partner.before:
        partner = spawn_partner()
    try:
        attacker = _spawn(kernel, elf, spec.program, spec.args, targets, in_kernel=spec.in_kernel)
    except UserError as error:  # refused at load
        observed = f"refused at load: {str(error).splitlines()[0]}"
        found = _found(elf, spec.expect.finding)
        observed += f"; {found}" if found else ""
        victim = victim_problem(stage)
        verdict = (
            PASS
            if spec.expect.refused_at_load and not victim and (spec.expect.finding is None or found)
            else FAIL
        )
        return RowResult(
            spec,
            observed + (f"; victim: {victim}" if victim else ""),
            verdict,
            "",
            victim,
            None,
            targets,
        )
    if spec.migrate is not None:
        migration_rows.arm(stage, spec, attacker, partner)
    if spec.partner is not None and partner is None:
        partner = spawn_partner()

    def attack_over() -> bool:
        _note_partner_gate(stage, partner, targets)
        return not attacker.running

    run_until(kernel, attack_over)
    if partner is not None:  # what the attack left it to do (a call that returns, ...)
        run_until(kernel, lambda: _settled(partner))
    output = bytes(attacker.console).decode(errors="replace")
    lines = output.splitlines()
    reports = [line.removeprefix("observed: ") for line in lines if line.startswith("observed: ")]
    bad = [line for line in lines if any(word in line for word in BAD_WORDS)]
    parts = list(reports)
    if attacker.running:
        parts.append("still running (killed)")
        kernel.kill(attacker)
    elif attacker.fault is not None:
        parts.append(attacker.fault.describe())
    elif spec.expect.exception is not None or attacker.exit_status != 0:
        parts.append(f"exited with status {attacker.exit_status}")
    parts.extend(line for line in bad if line not in parts)
    stray = _stray_vmfunc(elf) if spec.expect.stray_vmfunc else ""
    if stray:
        parts.append(stray)
    if partner is not None:
        parts.append(f"{partner.name}: " + (" | ".join(_partner_said(partner)) or "(silent)"))
    matched = (
        not spec.expect.refused_at_load
        and (not spec.expect.stray_vmfunc or bool(stray))
        and _matches(spec.expect, attacker, reports, targets, cpl=_ring(spec, stage.ring))
    )
    victim = "; ".join(
        problem
        for problem in (victim_problem(stage), _partner_problem(partner, spec.partner))
        if problem
    )
    if victim:
        parts.append(f"victim: {victim}")
    verdict = PASS if matched and not victim and not bad else FAIL
    return RowResult(
        spec,
        "; ".join(parts),
        verdict,
        output,
        victim,
        attacker,
        targets,
        "" if partner is None else bytes(partner.console).decode(errors="replace"),
    )


def _ring(spec: AttackSpec, placed: int) -> int:
    """The ring the attacker's fault must be in."""
    if spec.expect.ring is not None:
        return spec.expect.ring
    return placed if spec.in_kernel else 3


def run(
    specs: tuple[AttackSpec, ...] = ATTACKS, progress: Callable[[AttackSpec], None] | None = None
) -> RedTeamResult:
    rows = []
    for position, spec in enumerate(specs):
        # a row of the table keeps its own attacker region, whichever rows run with it
        index = ATTACKS.index(spec) if spec in ATTACKS else position
        rows.append(run_row(index, spec))
        if progress is not None:
            progress(spec)
    return RedTeamResult(tuple(rows))
