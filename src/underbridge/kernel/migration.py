"""Live migration of a server between user space and kernel space: the record, and when
it happens.

`Kernel.migrate` asks the IPC design's mover (`Mover`, the optional `mover` attribute of
a design; UnderBridge's is kernel/ipc/migrate.py) to move a running cap group, and logs
every request in `Kernel.migrations` with its reason, outcome and simulated cost.

Invariants:
  - A migration happens only while its server is quiescent: no thread runs its code and
    no call to it is in progress or queued (`Mover.quiescent`). Requested at another
    time, it is "pending" and the run loop completes it (`Pending.poll`) at the first
    kernel event after which the server is quiescent; a call is never lost or run twice,
    because no call is ever in flight while the server's paths change.
  - A refused migration changes nothing: the mover checks everything before it changes
    anything, and says why in `report`.
  - The cost is charged from rows of machine/costs.py only, and depends only on the
    server's pages, threads and connections: the same migration costs the same cycles
    on every run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from underbridge.machine.accounting import Charges

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup

# Where each counted event is charged (costs.py rows): a PTE or saved-register write is
# one store instruction; a changed mapping's TLB entry costs one INVLPG, or, past
# Linux's ceiling, the migration flushes the whole TLB once; generating a gate writes
# its code, one 8-byte store per word (`gate_words`; `gates_generated` counts gates).
# `pages_flushed` (the pages a full flush covered) is charged nothing.
EVENT_ROWS = {
    "pte_writes": "instruction",
    "key_retags": "instruction",
    "tlb_flushes": "invlpg",
    # Linux's flush of the local TLB: a CR3 write (native_flush_tlb_local)
    "tlb_full_flushes": "cr3_write",
    "gate_words": "instruction",
    "context_writes": "instruction",
    "instructions": "instruction",  # a forwarder's last instructions, run by the kernel
}
MIGRATION_CATEGORY = "migration"  # where a migration's cycles are attributed
# Linux arch/x86/mm/tlb.c (tlb_single_page_flush_ceiling): above 33 pages, one full TLB
# flush instead of one INVLPG per page (each about 100 ns, costs.py "invlpg").
TLB_SINGLE_PAGE_FLUSH_CEILING = 33


@dataclass(eq=False)
class Migration:
    """One request to move a server, and what came of it."""

    direction: str  # "in" (to kernel space) or "out" (to user space)
    group: str  # the server's cap group name
    reason: str
    state: str = "pending"  # "done", "pending" or "refused"
    report: str = ""  # why it was refused (empty otherwise)
    pages: int = 0  # pages whose mappings moved
    connections: int = 0  # connections whose path changed
    cycles: int = 0  # simulated cycles charged for it
    events: Counter[str] = field(default_factory=Counter)  # category -> count
    target: CapGroup | None = field(default=None, repr=False)

    def charges(self) -> Charges:
        """The rows this migration's events are charged as."""
        rows: Counter[str] = Counter()
        for event, count in self.events.items():
            if event in EVENT_ROWS and count:
                rows[EVENT_ROWS[event]] += count
        return Charges.of(*sorted(rows.items()))

    def line(self) -> str:
        """One line for a log or a report."""
        if self.state == "refused":
            return f"{self.group} {self.direction}: refused ({self.report})"
        events = ", ".join(f"{k} {v}" for k, v in sorted(self.events.items()) if v)
        return (
            f"{self.group} {self.direction}: {self.state}, {self.cycles:,} cycles "
            f"({self.pages} pages, {self.connections} connections; {events}) [{self.reason}]"
        )


class Mover(Protocol):
    """The part of an IPC design that moves servers (UnderBridge's migrate.py)."""

    def quiescent(self, kernel: Kernel, group: CapGroup) -> bool:
        """No thread runs the group's code and no call to it is in progress or queued."""

    def check(self, kernel: Kernel, group: CapGroup, *, to_kernel: bool) -> str:
        """Why the group cannot move that way now ("" if it can), changing nothing."""

    def move(self, kernel: Kernel, group: CapGroup, migration: Migration) -> None:
        """Move a quiescent group that `check` passed; fill in the migration's counts,
        or set it refused (having changed nothing) if admission refuses it."""


class Pending:
    """Migrations waiting for their server to become quiescent, in request order."""

    def __init__(self) -> None:
        self.waiting: list[Migration] = []

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def poll(self, kernel: Kernel, mover: Mover) -> None:
        """Complete every waiting migration whose server is quiescent now (or refuse it,
        if its server has ended or it can no longer be done)."""
        for migration in list(self.waiting):
            group = migration.target
            assert group is not None
            if not group.running:
                self.waiting.remove(migration)
                refuse(migration, f"{group.name} ended before it was quiescent")
            elif mover.quiescent(kernel, group):
                self.waiting.remove(migration)
                perform(kernel, mover, migration)


def refuse(migration: Migration, report: str) -> Migration:
    migration.state, migration.report = "refused", report
    return migration


def perform(kernel: Kernel, mover: Mover, migration: Migration) -> None:
    """Check again (the world may have changed while it waited), then move and charge."""
    group = migration.target
    assert group is not None
    problem = mover.check(kernel, group, to_kernel=migration.direction == "in")
    if problem:
        refuse(migration, problem)
        return
    mover.move(kernel, group, migration)
    if migration.state == "refused":
        return
    if migration.events["tlb_flushes"] > TLB_SINGLE_PAGE_FLUSH_CEILING:
        migration.events["pages_flushed"] = migration.events.pop("tlb_flushes")
        migration.events["tlb_full_flushes"] = 1
    charges = migration.charges()
    kernel.machine.charge_in(MIGRATION_CATEGORY, charges)
    migration.cycles = charges.cycles
    migration.state = "done"
    if kernel.supervisor is not None:
        kernel.supervisor.moved(group, to_kernel=migration.direction == "in")
    if kernel.tracer is not None:
        where = "kernel space" if migration.direction == "in" else "user space"
        kernel.tracer.lifecycle(
            "migrate", group, to=where, cycles=migration.cycles, reason=migration.reason
        )
