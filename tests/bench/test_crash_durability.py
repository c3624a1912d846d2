"""SQLite on the fs server loses no committed transaction when the fs server crashes.

The guest's SQLite keeps its rollback journal (journal_mode DELETE, synchronous FULL:
the defaults, which ubvfs.c leaves alone) and its xSync is FS_SYNC, which the fs server
answers only once every change is on the device. A YCSB run's block writes are
recorded; a crash at any instant leaves the disk before plus a prefix of them
(underbridge.fs.crash). For seeded prefixes, the fs server recovers the disk at mount,
and the database as the next open finds it (the host's SQLite rolls back a hot
journal) passes integrity_check and holds every transaction that had returned, with
its value, and nothing of the later ones."""

from __future__ import annotations

import random

import pytest

from underbridge.abi.syscalls import Sys
from underbridge.bench.crash_check import allowed_states, database_state
from underbridge.bench.ycsb import build_ycsb
from underbridge.fs import crash
from underbridge.fs.storage import start_storage
from underbridge.guestbuild.toolchain import symbol
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

RECORDS, OPS, SEED = 20, 20, 1
FS_WRITE, FS_SYNC, FS_DELETE = 4, 6, 8  # ub_fs.h


@pytest.fixture(scope="module")
def ycsb_run():
    """The storage after a YCSB-A run, the disk before it, its block writes, and the
    guest's progress counter at each, and the fs operations the app asked for."""
    storage = start_storage(Kernel(Machine(), ipc="sel4"), in_kernel=False)
    kernel, elf = storage.kernel, build_ycsb()
    before = storage.disk_image()
    app = kernel.spawn(
        elf, ["ycsb", str(RECORDS), str(OPS), str(SEED), "/ycsb.db", "a"], abi="linux"
    )
    at = symbol(elf, "ycsb_progress")[0]

    def progress() -> int:
        return int.from_bytes(kernel.machine.read_virtual(app.vmspace.table, at, 8), "little")

    ops: list[int] = []

    def observe(thread, number, regs) -> None:
        if thread.group is app and number == Sys.IPC_CALL:
            ops.append(regs[1])

    kernel.syscall_observers.append(observe)
    with crash.BlockRecorder(storage, note=progress) as recorder:
        kernel.run(until=lambda: not app.running)
    kernel.syscall_observers.remove(observe)
    assert app.exit_status == 0, bytes(app.console)
    return storage, before, recorder, ops


def test_every_transaction_syncs_its_journal_and_database_before_the_journal_goes(ycsb_run):
    """The VFS's side of the contract: per transaction (its journal's DELETE ends it),
    a SYNC after the journal is written and before the database is, one after the
    database is written, and the DELETE right after a SYNC."""
    *_, ops = ycsb_run
    durable = [op for op in ops if op in (FS_WRITE, FS_SYNC, FS_DELETE)]
    transactions = " ".join({FS_WRITE: "w", FS_SYNC: "s", FS_DELETE: "d"}[op] for op in durable)
    per_commit = [t.split() for t in transactions.split("d") if t.strip()]
    assert len(per_commit) >= OPS // 2  # the load, the CREATE and about half the ops update
    for steps in per_commit:
        assert steps[-1] == "s" and steps.count("s") >= 2, steps


def test_a_crash_at_seeded_block_writes_loses_no_committed_transaction(ycsb_run):
    storage, before, recorder, _ = ycsb_run
    writes, notes = recorder.writes, recorder.notes
    rng = random.Random(4)
    rolled_back = 0
    for done in sorted(rng.sample(range(len(writes) + 1), 25)):
        result = crash.remount(storage, crash.crash_image(before, writes, done))
        assert result.problems == [], (done, result.console)
        state = database_state(result.image)
        progress = notes[done] if done < len(notes) else RECORDS + OPS
        assert state.integrity == "ok", done
        assert state.rows in allowed_states(RECORDS, OPS, SEED, progress), (done, progress)
        rolled_back += state.hot_journal
    assert rolled_back > 0  # some crashes left a hot journal that the next open rolled back
