"""A YCSB run's results by the Python twin: its summary, a pure replay, the native run.

bench/ycsb_workload.py generates the operations (with bench/ycsb_core.py); this module
says what running them must produce: `replay` applies them to a dict (no database),
`run_native` runs them on Python's sqlite3 with ycsb.c's statements and transactions,
and `YcsbSummary` is the one line ycsb.c prints. bench/ycsb.py requires the guest's line
to equal `run_native`'s; the tests also compare the tables.

Invariants:
  - A summary depends only on (workload, records, ops, seed): `replay`'s equals
    `run_native`'s, file-backed or in memory.
  - The checksum folds, in operation order, the ten fields of every row a READ, a
    READMODIFYWRITE or a SCAN returned (FNV-1a 64); a READ's missing row folds nothing.
"""

from __future__ import annotations

import re
import sqlite3
from bisect import bisect_left, insort
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from underbridge.bench.ycsb_core import DEFAULT_WORKLOAD, Kind
from underbridge.bench.ycsb_workload import (
    CREATE_SQL,
    FNV_OFFSET_BASIS_64,
    INSERT_SQL,
    READ_SQL,
    SCAN_SQL,
    TABLE,
    UPDATE_SQL,
    Insert,
    Operation,
    Read,
    ReadModifyWrite,
    Scan,
    Update,
    YcsbGenerator,
    fnv1a_fold,
)

_SUMMARY = re.compile(
    r"^ycsb: workload=([a-f]) records=(\d+) ops=(\d+) seed=(\d+) reads=(\d+) updates=(\d+) "
    r"inserts=(\d+) scans=(\d+) rmws=(\d+) misses=(\d+) checksum=([0-9a-f]{16})$",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class YcsbSummary:
    """What a run reports. reads + updates + inserts + scans + rmws == ops; misses counts
    reads (READ and READMODIFYWRITE) that found no row."""

    workload: str
    records: int
    ops: int
    seed: int
    reads: int
    updates: int
    inserts: int
    scans: int
    rmws: int
    misses: int
    checksum: int  # FNV-1a 64 over the bytes of every field read or scanned, in order

    def line(self) -> str:
        """Exactly the text the C program prints for its summary, newline included."""
        return (
            f"ycsb: workload={self.workload} records={self.records} ops={self.ops} "
            f"seed={self.seed} reads={self.reads} updates={self.updates} "
            f"inserts={self.inserts} scans={self.scans} rmws={self.rmws} "
            f"misses={self.misses} checksum={self.checksum:016x}\n"
        )

    @classmethod
    def parse(cls, text: str) -> YcsbSummary:
        """The one summary line in a program's output; ValueError if none or several."""
        found = _SUMMARY.findall(text)
        if len(found) != 1:
            raise ValueError(f"expected one ycsb summary line, found {len(found)}")
        name, *counts, checksum = found[0]
        return cls(name, *(int(count) for count in counts), checksum=int(checksum, 16))


class _Tally:
    """Counts and checksum of a run in progress."""

    __slots__ = ("checksum", "counts", "misses")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(Kind, 0)
        self.misses = 0
        self.checksum = FNV_OFFSET_BASIS_64

    def fold(self, fields: tuple[str, ...] | None) -> None:
        """A row read (None: the key was missing, a miss)."""
        if fields is None:
            self.misses += 1
            return
        # Folding the concatenation equals folding field by field (FNV is sequential).
        self.checksum = fnv1a_fold(self.checksum, "".join(fields).encode("utf-8"))

    def summary(self, workload: str, records: int, ops: int, seed: int) -> YcsbSummary:
        counts = [self.counts[kind] for kind in Kind]
        return YcsbSummary(workload, records, ops, seed, *counts, self.misses, self.checksum)


def _kind_of(op: Operation) -> Kind:
    return _KINDS[type(op)]


_KINDS: dict[type, Kind] = {
    Read: Kind.READ,
    Update: Kind.UPDATE,
    Insert: Kind.INSERT,
    Scan: Kind.SCAN,
    ReadModifyWrite: Kind.RMW,
}


class _Table:
    """The table as a dict plus its keys in SQLite's order (BINARY: the keys are ASCII)."""

    def __init__(self, rows: dict[str, tuple[str, ...]]) -> None:
        self.rows = rows
        self.order = sorted(rows)

    def update(self, key: str, field: int, value: str) -> None:
        if key in self.rows:
            fields = list(self.rows[key])
            fields[field] = value
            self.rows[key] = tuple(fields)

    def insert(self, key: str, values: tuple[str, ...]) -> None:
        if key in self.rows:  # the PRIMARY KEY: SQLite (and the guest) would fail
            raise ValueError(f"two keynums share the key name {key}")
        self.rows[key] = values
        insort(self.order, key)

    def scan(self, key: str, length: int) -> list[tuple[str, ...]]:
        start = bisect_left(self.order, key)
        return [self.rows[k] for k in self.order[start : start + length]]


def replay(
    records: int, ops: int, seed: int, workload: str = DEFAULT_WORKLOAD
) -> tuple[YcsbSummary, dict[str, tuple[str, ...]]]:
    """The run's summary and final table content, computed without any database."""
    generator = YcsbGenerator(seed)
    rows = dict(generator.load_records(records))
    if len(rows) != records:
        raise ValueError(f"two keynums below {records} share a key name")  # PRIMARY KEY
    table, tally = _Table(rows), _Tally()
    for op in generator.operations(records, ops, workload):
        tally.counts[_kind_of(op)] += 1
        if isinstance(op, Insert):
            table.insert(op.key, op.values)
        elif isinstance(op, Scan):
            for fields in table.scan(op.key, op.length):
                tally.fold(fields)
        else:
            if not isinstance(op, Update):  # READ and READMODIFYWRITE read first
                tally.fold(rows.get(op.key))
            if not isinstance(op, Read):
                table.update(op.key, op.field, op.value)
    return tally.summary(workload, records, ops, seed), rows


def expected_rows(
    records: int, ops: int, seed: int, workload: str = DEFAULT_WORKLOAD
) -> dict[str, tuple[str, ...]]:
    """The table after the run, key -> (FIELD0..FIELD9), by pure replay (no SQLite)."""
    return replay(records, ops, seed, workload)[1]


def read_rows(db_path: Path | str) -> dict[str, tuple[str, ...]]:
    """Every row of a YCSB database, key -> (FIELD0..FIELD9), for comparisons."""
    with closing(sqlite3.connect(db_path)) as db:
        return {key: tuple(fields) for key, *fields in db.execute(f"SELECT * FROM {TABLE}")}


def run_native(
    db_path: Path | str | None,
    records: int,
    ops: int,
    seed: int,
    workload: str = DEFAULT_WORKLOAD,
) -> YcsbSummary:
    """Runs the workload on Python's sqlite3 exactly as ycsb.c does on its SQLite.

    Same statements, same transactions: CREATE TABLE (fails if it exists), the load in one
    BEGIN..COMMIT, then every operation in autocommit (a READMODIFYWRITE: two
    statements). isolation_level=None stops the module from opening transactions of its
    own; its statement cache keeps each SQL string prepared once, as ycsb.c does.
    db_path None runs on a private in-memory database: the same summary (it never
    depends on the storage), without the file system's syncs, which dominate a
    file-backed run's wall time.
    """
    generator = YcsbGenerator(seed)
    db = sqlite3.connect(":memory:" if db_path is None else db_path, isolation_level=None)
    try:
        db.execute(CREATE_SQL)
        db.execute("BEGIN")
        db.executemany(
            INSERT_SQL, ((key, *fields) for key, fields in generator.load_records(records))
        )
        db.execute("COMMIT")
        tally = _Tally()
        for op in generator.operations(records, ops, workload):
            tally.counts[_kind_of(op)] += 1
            _execute(db, op, tally)
        return tally.summary(workload, records, ops, seed)
    finally:
        db.close()


def _execute(db: sqlite3.Connection, op: Operation, tally: _Tally) -> None:
    """One operation on the native database, its reads folded into the tally."""
    if isinstance(op, Insert):
        db.execute(INSERT_SQL, (op.key, *op.values))
        return
    if isinstance(op, Scan):
        for row in db.execute(SCAN_SQL, (op.key, op.length)):
            tally.fold(tuple(row[1:]))
        return
    if not isinstance(op, Update):  # READ and READMODIFYWRITE read first
        row = db.execute(READ_SQL, (op.key,)).fetchone()
        tally.fold(None if row is None else tuple(row[1:]))
    if not isinstance(op, Read):
        db.execute(UPDATE_SQL[op.field], (op.value, op.key))
