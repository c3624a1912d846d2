"""The Intel SDM's rules for a linear-address access, stated as a specification.

Intel SDM Vol. 3A, 4.6 "Access Rights" and 4.6.2 "Protection Keys", for 4-level
paging with the leaf's flags deciding (paging.py keeps upper levels permissive), with
CR4.SMEP = CR4.SMAP = 0 (the machine's configuration: in-kernel servers execute and
access U=1 pages in ring 0) and EFER.NXE = 1:

  - a not-present page faults for every access;
  - ring 3 may not touch a supervisor (U=0) page at all;
  - a fetch from an XD (NX) page faults;
  - a write to a read-only page faults in ring 3, and in ring 0 only when CR0.WP=1;
  - when CR4.PKE=1, data accesses to U=1 pages consult PKRU for the page's key, in
    either ring: AD denies reads and writes; WD denies writes in ring 3, and in ring 0
    only when CR0.WP=1. Supervisor pages and instruction fetches ignore PKRU.

`violations` returns every rule an access breaks, so a test can check both whether the
emulated CPU faults and that the reason it reports is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Access(Enum):
    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


class Violation(Enum):
    """Why an access is denied; also the reason a decoded #PF reports."""

    NOT_PRESENT = "page not present"
    USER_TO_SUPERVISOR = "user-mode access to a supervisor page"
    FETCH_NX = "instruction fetch from a no-execute page"
    WRITE_READ_ONLY = "write to a read-only page"
    PKEY_ACCESS_DISABLED = "protection key access-disabled (PKRU.AD)"
    PKEY_WRITE_DISABLED = "protection key write-disabled (PKRU.WD)"
    RESERVED_BIT = "reserved bit set in a paging entry"


@dataclass(frozen=True, slots=True)
class Page:
    present: bool
    writable: bool
    user: bool
    executable: bool
    pkey: int


@dataclass(frozen=True, slots=True)
class Cpu:
    cpl: int
    pkru: int
    wp: bool = True
    pke: bool = True


def violations(page: Page, access: Access, cpu: Cpu) -> frozenset[Violation]:
    """Every SDM access rule that `access` to `page` breaks on `cpu` (empty: allowed)."""
    if not page.present:
        return frozenset({Violation.NOT_PRESENT})
    found: set[Violation] = set()
    user_mode = cpu.cpl == 3
    if user_mode and not page.user:
        found.add(Violation.USER_TO_SUPERVISOR)
    if access is Access.FETCH:
        if not page.executable:
            found.add(Violation.FETCH_NX)
        return frozenset(found)
    if access is Access.WRITE and not page.writable and (user_mode or cpu.wp):
        found.add(Violation.WRITE_READ_ONLY)
    if cpu.pke and page.user:
        if cpu.pkru >> (2 * page.pkey) & 1:
            found.add(Violation.PKEY_ACCESS_DISABLED)
        elif (
            access is Access.WRITE and cpu.pkru >> (2 * page.pkey + 1) & 1 and (user_mode or cpu.wp)
        ):
            found.add(Violation.PKEY_WRITE_DISABLED)
    return frozenset(found)


def allowed(page: Page, access: Access, cpu: Cpu) -> bool:
    return not violations(page, access, cpu)
