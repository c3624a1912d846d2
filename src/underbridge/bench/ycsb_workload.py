"""YCSB's core workloads on SQLite (A by default): the Python twin of the guest.

guest/apps/ycsb/ycsb.c (with ycsb_gen.h and ycsb_mix.h) runs a workload on SQLite
inside the microkernel; this module generates the very same records and operations,
which bench/ycsb_native.py runs natively on Python's sqlite3 (`run_native`) and replays
without any database (`expected_rows`), so the guest's output and database can be
checked exactly.
Workload A (50% reads, 50% updates, zipfian keys) is specified below; B-F (YCSB's
`workloads/workloadb`..`workloadf`: other proportions, inserts, scans, read-modify-
writes and the `latest` distribution) are specified in bench/ycsb_core.py, whose
chooser and key rules `YcsbGenerator.operations` applies, A included.

The spec (both twins implement it bit for bit):
  - One splitmix64 stream seeded with SEED drives everything, in program order.
    next_double() = (next() >> 11) * 2**-53, so it lies in [0, 1) on the 2**-53 grid.
  - fnvhash64(v) is YCSB's Utils.fnvhash64: FNV-1a over the 8 little-endian bytes of the
    long v, then Java's Math.abs of the signed result (Long.MIN_VALUE stays negative).
  - key_name(keynum) = "user" + decimal(fnvhash64(keynum)) (CoreWorkload.buildKeyName
    with hashed inserts and zeropadding=1).
  - Keys are chosen by YCSB's ScrambledZipfianGenerator(0, records-1): an inner
    ZipfianGenerator over 10**10 + 1 items with theta 0.99 and YCSB's precomputed zetan
    consumes one next_double(); keynum = fnvhash64(inner) mod records.
  - A field value takes 13 outputs; output i contributes its little-endian bytes j=0..7,
    each byte b becoming chr(32 + b % 95); the first 100 characters are the value.
  - Load: for keynum 0..records-1: the key, then FIELD0..FIELD9's values, all inserted
    in ONE transaction.
  - Run, `ops` times, each op in autocommit: u = next_double(); keynum (one draw);
    u < 0.5 is a READ of all ten fields, whose bytes (fields in order) are folded into an
    FNV-1a 64 checksum (a missing row counts a miss and folds nothing); otherwise an
    UPDATE of field int(next_double() * 10) to a fresh value (13 outputs).
  - The other workloads (bench/ycsb_core.py): an INSERT draws ten values for the next
    keynum; a SCAN draws its start keynum, then its length, and folds every row of
    `SELECT * ... WHERE YCSB_KEY >= start ORDER BY YCSB_KEY LIMIT length` (YCSB's JDBC
    binding's scan) into the checksum; a READMODIFYWRITE draws like an UPDATE, reads the
    row (folded like a READ), then updates it, as two autocommit statements.

Deviations from YCSB (none changes what kind of load SQLite sees):
  - Java's ThreadLocalRandom is replaced by the single seeded splitmix64 stream, and
    field values by the printable-byte mapping above (YCSB uses RandomByteIterator).
  - CoreWorkload builds its key chooser as ScrambledZipfianGenerator(0, records) and
    redraws keys > records-1; here it is ScrambledZipfianGenerator(0, records-1) with no
    redraw, so every op draws exactly one double for its key.
  - ZipfianGenerator's constructor draws one throw-away value; nothing is drawn here.
  - Java computes `fnvhash64(x) % itemcount`, which is negative for fnvhash64(x) ==
    Long.MIN_VALUE; here the remainder is taken mod records (floor), so keynum is always
    in [0, records). No inner value can reach that case anyway: no long in
    [0, 2**34) hashes to Long.MIN_VALUE (tests/bench/test_ycsb_workload.py proves it).
  - Math.pow is libm's pow here: glibc's natively, musl's in the guest. They are the same
    algorithm, bit-identical except that glibc picks an FMA build on FMA hosts, which
    differs by 1 ulp on ~0.07% of this generator's inputs; a key changes only if that
    ulp also crosses an integer of items * pow(...), odds ~1e-9 per operation. The
    tests compare a static musl build against this module on every stream they draw.

Invariants:
  - The stream is consumed in exactly the order above; iterate `load_records` to the end
    before `operations`, as the C program does (or use `workload`).
  - Workload A's keynums are in [0, records); every workload's are at most the last
    keynum inserted (bench/ycsb_core.py); every value is 100 characters in ' '..'~'.
  - The summary of a run depends only on (workload, records, ops, seed), never on the database
    engine: ycsb_native.replay computes it without SQLite and must equal `run_native`'s
    and the guest's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from underbridge.bench.ycsb_core import (
    DEFAULT_WORKLOAD,
    CoreWorkload,
    Kind,
    LatestGenerator,
    choose,
    java_int,
    workload_named,
)

MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63

# splitmix64 (Steele, Lea, Flood 2014)
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_DOUBLE_UNIT = 2.0**-53

# FNV-1a 64 (YCSB's Utils.FNV_OFFSET_BASIS_64 / FNV_PRIME_64); also the read checksum.
FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211

# ScrambledZipfianGenerator's constants: the inner generator covers [0, ITEM_COUNT].
ITEM_COUNT = 10_000_000_000
ZIPF_ITEMS = ITEM_COUNT + 1  # ZipfianGenerator(min=0, max=ITEM_COUNT): max - min + 1
ZIPFIAN_CONSTANT = 0.99
ZETAN = 26.46902820178302

FIELD_COUNT = 10
FIELD_LENGTH = 100
VALUE_OUTPUTS = 13  # ceil(100 / 8) outputs per value
READ_PROPORTION = 0.5
TABLE = "usertable"
KEY_COLUMN = "YCSB_KEY"
FIELD_NAMES = tuple(f"FIELD{i}" for i in range(FIELD_COUNT))

CREATE_SQL = (
    f"CREATE TABLE {TABLE} ({KEY_COLUMN} VARCHAR(255) PRIMARY KEY, "
    + ", ".join(f"{name} TEXT" for name in FIELD_NAMES)
    + ")"
)
INSERT_SQL = f"INSERT INTO {TABLE} VALUES ({', '.join('?' * (FIELD_COUNT + 1))})"
READ_SQL = f"SELECT * FROM {TABLE} WHERE {KEY_COLUMN} = ?"
UPDATE_SQL = tuple(f"UPDATE {TABLE} SET {name} = ? WHERE {KEY_COLUMN} = ?" for name in FIELD_NAMES)
SCAN_SQL = f"SELECT * FROM {TABLE} WHERE {KEY_COLUMN} >= ? ORDER BY {KEY_COLUMN} LIMIT ?"

# byte b -> 32 + b % 95: every byte value maps to a printable ASCII character.
_PRINTABLE = bytes(32 + b % 95 for b in range(256))


def fnvhash64(val: int) -> int:
    """YCSB's Utils.fnvhash64(long val), bit for bit.

    `val` is a Java long (taken mod 2**64 as two's complement). Java shifts it
    arithmetically, but iteration i reads only bits 8i..8i+7 of the original value, which
    no shifted-in sign bit ever reaches, so an unsigned view gives the same octets.
    Returns Java's Math.abs of the signed hash: in [0, 2**63), except that a hash of
    exactly Long.MIN_VALUE stays -2**63.
    """
    hashval = FNV_OFFSET_BASIS_64
    val &= MASK64
    for _ in range(8):
        hashval = ((hashval ^ (val & 0xFF)) * FNV_PRIME_64) & MASK64
        val >>= 8
    return java_abs(hashval)


def java_abs(bits: int) -> int:
    """Java's Math.abs of the long whose 64 bits are `bits`: Long.MIN_VALUE stays -2**63."""
    signed = bits - (1 << 64) if bits & _SIGN64 else bits
    return signed if signed == -_SIGN64 else abs(signed)


def key_name(keynum: int) -> str:
    """CoreWorkload.buildKeyName(keynum, zeropadding=1, orderedinserts=false)."""
    return f"user{fnvhash64(keynum)}"


def fnv1a_fold(checksum: int, data: bytes) -> int:
    """Folds `data` into a running FNV-1a 64 checksum (start from FNV_OFFSET_BASIS_64)."""
    for byte in data:
        checksum = ((checksum ^ byte) * FNV_PRIME_64) & MASK64
    return checksum


@dataclass(frozen=True, slots=True)
class ZipfConstants:
    """ZipfianGenerator(0, ITEM_COUNT, 0.99, ZETAN)'s derived constants, as YCSB computes them."""

    items: int
    theta: float
    zetan: float
    zeta2theta: float
    alpha: float
    eta: float
    one_threshold: float  # 1.0 + 0.5**theta: uz below it (and >= 1) gives item 1

    @classmethod
    def ycsb(cls) -> ZipfConstants:
        theta = ZIPFIAN_CONSTANT
        # zeta(2, theta) = zetastatic(0, 2, theta, 0): the sum in YCSB's order, from 0.0.
        zeta2theta = 0.0
        for i in range(2):
            zeta2theta += 1 / math.pow(i + 1, theta)
        eta = (1 - math.pow(2.0 / ZIPF_ITEMS, 1 - theta)) / (1 - zeta2theta / ZETAN)
        return cls(
            items=ZIPF_ITEMS,
            theta=theta,
            zetan=ZETAN,
            zeta2theta=zeta2theta,
            alpha=1.0 / (1.0 - theta),
            eta=eta,
            one_threshold=1.0 + math.pow(0.5, theta),
        )


ZIPF = ZipfConstants.ycsb()


def zipfian_base(u: float, zipf: ZipfConstants = ZIPF) -> float:
    """pow's base in nextLong: Java's eta * u - eta + 1, one rounding per operation.

    Python evaluates ((eta * u) - eta) + 1 left to right and never fuses a multiply-add,
    exactly like the C twin built without FMA contraction. alpha = 100 turns one ulp
    here into ~100 ulps of pow, so the order matters.
    """
    return zipf.eta * u - zipf.eta + 1


def zipfian_inner(u: float, zipf: ZipfConstants = ZIPF) -> int:
    """ZipfianGenerator.nextLong(items) for the uniform draw `u` in [0, 1): in [0, items].

    float(items) * pow(base, alpha), truncated toward zero like Java's (long) cast.
    """
    uz = u * zipf.zetan
    if uz < 1.0:
        return 0
    if uz < zipf.one_threshold:
        return 1
    return int(zipf.items * math.pow(zipfian_base(u, zipf), zipf.alpha))


def scramble(inner: int, records: int) -> int:
    """ScrambledZipfianGenerator's last step: fnvhash64(inner) mod records, in [0, records).

    A floor remainder, where Java's `%` would go negative for Long.MIN_VALUE (unreachable).
    """
    return fnvhash64(inner) % records


@dataclass(frozen=True, slots=True)
class Read:
    """A READ of all fields of `key`."""

    keynum: int
    key: str


@dataclass(frozen=True, slots=True)
class Update:
    """An UPDATE of field number `field` (0..9) of `key` to `value`."""

    keynum: int
    key: str
    field: int
    value: str


@dataclass(frozen=True, slots=True)
class Insert:
    """An INSERT of the new record `key` with `values` (FIELD0..FIELD9)."""

    keynum: int
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scan:
    """A SCAN of at most `length` rows from `key` on, in key order, all fields."""

    keynum: int
    key: str
    length: int


@dataclass(frozen=True, slots=True)
class ReadModifyWrite:
    """A READ of all fields of `key`, then an UPDATE of field `field` to `value`."""

    keynum: int
    key: str
    field: int
    value: str


Operation = Read | Update | Insert | Scan | ReadModifyWrite
LoadRecord = tuple[str, tuple[str, ...]]  # (key, the ten field values)


class YcsbGenerator:
    """The seeded stream and everything drawn from it (the C twin: ycsb_gen.h).

    Invariant: every method draws from the one stream in the spec's order; two
    generators with the same seed called the same way produce the same results.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= MASK64:
            raise ValueError(f"seed must be a uint64, not {seed}")
        self._state = seed

    def next_u64(self) -> int:
        """splitmix64's next output."""
        state = (self._state + _GOLDEN_GAMMA) & MASK64
        self._state = state
        z = ((state ^ (state >> 30)) * _MIX1) & MASK64
        z = ((z ^ (z >> 27)) * _MIX2) & MASK64
        return z ^ (z >> 31)

    def next_double(self) -> float:
        """A uniform double in [0, 1): the top 53 bits of one output, scaled exactly."""
        return (self.next_u64() >> 11) * _DOUBLE_UNIT

    def next_value(self) -> str:
        """A field value: 100 printable ASCII characters from 13 outputs."""
        # next_u64 inlined: values take 94% of all draws, and a call per output would
        # double the native runner's generator time.
        state = self._state
        raw = bytearray()
        for _ in range(VALUE_OUTPUTS):
            state = (state + _GOLDEN_GAMMA) & MASK64
            z = ((state ^ (state >> 30)) * _MIX1) & MASK64
            z = ((z ^ (z >> 27)) * _MIX2) & MASK64
            raw += (z ^ (z >> 31)).to_bytes(8, "little")
        self._state = state
        return raw[:FIELD_LENGTH].translate(_PRINTABLE).decode("ascii")

    def next_keynum(self, records: int) -> int:
        """ScrambledZipfianGenerator(0, records - 1).nextValue(): one draw, in [0, records)."""
        return scramble(zipfian_inner(self.next_double()), records)

    def load_records(self, records: int) -> Iterator[LoadRecord]:
        """The load phase's rows in insertion order (keynum 0..records-1)."""
        _check_counts(records, 0)
        for keynum in range(records):
            yield key_name(keynum), tuple(self.next_value() for _ in range(FIELD_COUNT))

    def operations(
        self, records: int, ops: int, workload: str = DEFAULT_WORKLOAD
    ) -> Iterator[Operation]:
        """The run phase's operations; draw only after the load phase was drawn.

        Per op: the kind (one draw, `choose`); an INSERT then draws ten values for the
        next keynum; every other kind draws its keynum (`_keynum`), then a SCAN its
        length, an UPDATE or READMODIFYWRITE its field and value.
        """
        _check_counts(records, ops)
        spec = workload_named(workload)
        keyspace = records + spec.expected_new_keys(ops)
        latest = LatestGenerator(records - 1) if spec.latest else None
        last = records - 1  # the last keynum inserted (and acknowledged)
        for _ in range(ops):
            kind = choose(self.next_double(), spec)
            if kind is Kind.INSERT:
                last += 1
                values = tuple(self.next_value() for _ in range(FIELD_COUNT))
                yield Insert(last, key_name(last), values)
                continue
            keynum = self._keynum(keyspace, last, latest)
            yield self._keyed(kind, keynum, spec)

    def _keynum(self, keyspace: int, last: int, latest: LatestGenerator | None) -> int:
        """CoreWorkload.nextKeynum: draw (intValue) until at most the last inserted."""
        while True:
            if latest is None:
                keynum = self.next_keynum(keyspace)
            else:
                keynum = java_int(latest.next(last, self.next_double))
            if keynum <= last:
                return keynum

    def _keyed(self, kind: Kind, keynum: int, spec: CoreWorkload) -> Operation:
        key = key_name(keynum)
        if kind is Kind.READ:
            return Read(keynum, key)
        if kind is Kind.SCAN:
            span = spec.max_scan - spec.min_scan + 1
            return Scan(keynum, key, spec.min_scan + int(self.next_double() * span))
        field = int(self.next_double() * FIELD_COUNT)
        if kind is Kind.UPDATE:
            return Update(keynum, key, field, self.next_value())
        return ReadModifyWrite(keynum, key, field, self.next_value())


def _check_counts(records: int, ops: int) -> None:
    if records < 1:
        raise ValueError(f"records must be at least 1, not {records}")
    if ops < 0:
        raise ValueError(f"ops must not be negative, not {ops}")


def workload(
    records: int, ops: int, seed: int, name: str = DEFAULT_WORKLOAD
) -> tuple[list[LoadRecord], list[Operation]]:
    """The whole workload for (records, ops, seed): load rows, then operations."""
    generator = YcsbGenerator(seed)
    rows = list(generator.load_records(records))
    return rows, list(generator.operations(records, ops, name))
