"""What a crash left of a YCSB database: its files read off a disk image, opened by the
host's SQLite, and compared with the transactions the application saw commit.

`database_state(image)` copies every file of the image's ubfs (the database and, if
the crash left one, its hot journal under the same name + "-journal") into a private
directory and opens the database there, so the host's SQLite finds the journal and rolls
it back, as the guest's SQLite would at its next open. It reports PRAGMA
integrity_check's answer and every row; a database that is absent, or that has no YCSB
table yet, has rows None.

`allowed_states(records, ops, seed, progress)` says which table contents are correct
after a crash at a moment when the guest's ycsb_progress counter read `progress`
(records loaded + operations done): every transaction that had returned must be there
with its value, and the one in flight (whose outcome the application never saw) may be
there or not. The contents come from the workload's Python twin (ycsb_native), never
from the guest.
"""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from underbridge.bench.ycsb_native import expected_rows, read_rows
from underbridge.fs.ubfs import Ubfs

Rows = dict[str, tuple[str, ...]]
DB_NAME = "ycsb.db"


@dataclass(frozen=True, slots=True)
class DbState:
    integrity: str  # PRAGMA integrity_check's first line: "ok" when sound
    rows: Rows | None  # None: no database or no table yet
    hot_journal: bool  # the crash left a journal for the next open to roll back


def database_state(image: bytes, name: str = DB_NAME) -> DbState:
    """Open the database of a disk image as the next open would find it."""
    disk = Ubfs(image)
    files = disk.files()
    if name not in files:
        return DbState("ok", None, False)
    with tempfile.TemporaryDirectory(prefix="ub-crash-") as tmp:
        for each in files:
            Path(tmp, each).write_bytes(disk.read(each))
        path = Path(tmp, name)
        hot = files.get(name + "-journal", 0) > 0
        with closing(sqlite3.connect(path)) as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            has_table = db.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'usertable'"
            ).fetchone()[0]
        rows = read_rows(path) if has_table else None
    return DbState(integrity, rows, hot)


def allowed_states(records: int, ops: int, seed: int, progress: int) -> list[Rows | None]:
    """The table contents a crash may leave when ycsb_progress read `progress`."""
    if progress <= records:  # loading: its one transaction commits at the end
        allowed: list[Rows | None] = [None, {}, expected_rows(records, 0, seed)]
        if progress == records:  # the load may have committed, the first op be in flight
            allowed.append(expected_rows(records, min(1, ops), seed))
        return allowed
    done = progress - records
    return [expected_rows(records, done, seed), expected_rows(records, min(done + 1, ops), seed)]
