"""The migration rows (redteam/migration_rows.py) pass, and each FAILS on a kernel whose
migration lacks the defence the row is about: every row is an attack that succeeds on a
naive kernel. Each naive kernel is the real one with one step taken out (monkeypatch)."""

from __future__ import annotations

import pytest

from underbridge import redteam
from underbridge.kernel.ipc import migrate
from underbridge.kernel.ipc.redirect import Redirects
from underbridge.machine.paging import PageFlags
from underbridge.redteam.runner import run_row

ROWS = {spec.id: spec for spec in redteam.ATTACKS if spec.migrate}


def run(row_id: str) -> redteam.RowResult:
    spec = ROWS[row_id]
    return run_row(redteam.ATTACKS.index(spec), spec)


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_the_row_passes(row_id):
    row = run(row_id)
    assert row.passed, row.observed
    assert [m.state for m in (row.attacker and []) or []] == []


def test_three_rows_one_per_attack_of_the_issue():
    assert sorted(ROWS) == ["mig-old-addresses", "mig-race", "mig-stale-gate"]


def keep_pages_on_the_kernel_table(monkeypatch):
    """A naive move-out: the server's pages are mapped in its new table, but never
    cleared from the kernel page table."""
    real = migrate.Migrator._move_pages

    def naive(space, old, new, key):
        if key != 0:
            return real(space, old, new, key)
        moved = []
        for vaddr in [*space.private_pages]:
            mapping = old.lookup(vaddr)
            flags = mapping.flags
            new.map(vaddr, mapping.frame, PageFlags(flags.writable, True, flags.executable, 0))
            moved.append(vaddr)
        return moved

    monkeypatch.setattr(migrate.Migrator, "_move_pages", staticmethod(naive))


def test_stale_gate_fails_when_echo_stays_on_the_kernel_table(monkeypatch):
    keep_pages_on_the_kernel_table(monkeypatch)
    row = run("mig-stale-gate")
    assert not row.passed
    assert "protection key" in row.observed  # echo's stack still there, behind a key


def test_stale_gate_fails_without_the_forwarder(monkeypatch):
    monkeypatch.setattr(Redirects, "add_kernel_forwarder", lambda self, kernel, conn: 0)
    row = run("mig-stale-gate")
    assert not row.passed
    assert "call = 0 mr1 = 8" not in row.observed  # its call faulted at the old gate


def test_old_addresses_fail_when_the_new_table_keeps_the_kernels_mappings(monkeypatch):
    """A naive move-out: the server's new page table is made from the kernel page table
    (every mapping kept), and it runs with PKRU 0, as applications do."""
    real = migrate.Migrator._move_pages

    def naive(space, old, new, key):
        moved = real(space, old, new, key)
        if key == 0:  # moving out: copy what the kernel page table still maps
            for vaddr, mapping in list(old.mappings()):
                if new.lookup(vaddr) is None:
                    new.map(vaddr, mapping.frame, mapping.flags)
        return moved

    monkeypatch.setattr(migrate.Migrator, "_move_pages", staticmethod(naive))
    row = run("mig-old-addresses")
    assert not row.passed
    assert "LEAKED: echo's stack" in row.attacker_output


def test_race_fails_when_migrations_do_not_wait_for_quiescence(monkeypatch):
    """Moved in while it owes a reply and a call is queued, the server's REPLY_WAIT takes
    the in-kernel path: the reply and the queued call are lost, the application hangs."""
    monkeypatch.setattr(migrate.Migrator, "quiescent", lambda self, kernel, group: True)
    row = run("mig-race")
    assert not row.passed
    assert "still running (killed)" in row.observed
