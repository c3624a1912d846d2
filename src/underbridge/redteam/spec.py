"""What a red-team row is: an attack program, its arguments, the outcome it must have.

`Expect` says what a row requires, `Partner` describes a second program on its stage
(placed where the row's design places servers), `AttackSpec` is one row of THE table
(rows.py); its `mode` names the IPC design the row's stage runs under. The stage's
layout (where echo, the legitimate client, attackers, partners and applications are
linked) is here too, so the table, the stage and the runner agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from underbridge.bench.ipc import PINGPONG_BASE
from underbridge.machine.oracle import Access, Violation

LEGIT_BASE = PINGPONG_BASE  # the legitimate in-kernel client's region
ATTACK_BASE = 0x0300_0000  # row i's in-kernel attacker is linked at ATTACK_BASE + i * 16 MiB
PARTNER_BASE = 0x5F00_0000  # a row's partner: the last region below the gates (LOW_LIMIT)
APP_BASE = 0x40_0000  # applications (ring 3, own page table)
VICTIM_ROUNDS = 20
MAX_EVENTS = 20_000  # kernel events one program may take before it counts as hung
PTE_P_RW_U = 0x7  # present, writable, user: the flags of a forged page-table entry
BAD_WORDS = ("LEAKED", "broken")
PASS, FAIL = "PASS", "FAIL"


@dataclass(frozen=True, slots=True)
class Expect:
    """The outcome a row requires. exception None: the attacker must survive, exit 0
    and print exactly `reports` as its "observed:" lines; with an exception, non-empty
    `reports` must be printed before the fault. Target names (address, rip, pkru) are
    resolved against the stage's targets."""

    text: str  # the table's "expected" column
    exception: str | None = None  # "#PF", "#UD", "#GP", ...
    reason: Violation | None = None
    access: Access | None = None
    address: str | None = None  # the faulting address must be this target
    rip: str | None = None  # the faulting instruction must be at this target
    pkru: str | None = None  # the PKRU at the fault must be this target
    reports: tuple[str, ...] = ()
    instruction: str | None = None  # the faulting instruction must start with this
    refused_at_load: bool = False  # the kernel must refuse to place the attacker
    finding: tuple[str, bool] | None = None  # and the scan must hold (class, aligned)
    stray_vmfunc: bool = False  # the attacker's code must hold a vmfunc (SkyBridge's scan)
    ring: int | None = None  # the fault's ring, if not where the attacker was placed (migrated)


@dataclass(frozen=True, slots=True)
class Partner:
    """A second program on a row's stage, placed like a server of the row's design (in
    kernel space under underbridge): the attack's victim or accomplice."""

    program: str  # guest/attacks/<program>.c, linked at PARTNER_BASE
    args: tuple[str, ...] = ()  # like AttackSpec.args (stage targets only)
    before: bool = False  # spawned before the attacker (else just after it)
    lines: tuple[str, ...] = ()  # exactly the "victim: " lines it must print
    symbols: tuple[str, ...] = ()  # its globals, published as targets partner_<name>


@dataclass(frozen=True, slots=True)
class AttackSpec:
    id: str
    attack: str  # the table's "attack" column
    program: str  # guest/attacks/<program>.c
    args: tuple[str, ...]
    expect: Expect
    in_kernel: bool = True  # placed where the design places servers; False: an application
    partner: Partner | None = None
    symbols: tuple[str, ...] = ()  # the attacker's globals, as targets attacker_<name>
    mode: str = "underbridge"  # the IPC design of the row's stage (stage.py)
    migrate: str | None = None  # a migration the kernel makes during the row (migration_rows.py)


def pkey_fault(access: Access, target: str, text: str) -> Expect:
    return Expect(text, "#PF", Violation.PKEY_ACCESS_DISABLED, access, address=target)


def absent(access: Access, target: str, text: str) -> Expect:
    return Expect(text, "#PF", Violation.NOT_PRESENT, access, address=target)
