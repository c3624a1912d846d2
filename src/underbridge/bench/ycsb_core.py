"""YCSB's core workloads A-F: their proportions, the operation chooser, the `latest` keys.

The six workloads are YCSB's own property files, brianfrankcooper/YCSB `workloads/
workloada` .. `workloadf` (read at commit d9faaac85a95acd4c650a3436ac41eeaeb49c365),
all with readallfields=true and the CoreWorkload defaults otherwise (writeallfields=false,
fieldcount 10, fieldlength 100, hashed inserts, minscanlength 1):

    A  read 0.5   update 0.5                           zipfian   update heavy
    B  read 0.95  update 0.05                          zipfian   read mostly
    C  read 1                                          zipfian   read only
    D  read 0.95  insert 0.05                          latest    read latest
    E  scan 0.95  insert 0.05  (maxscanlength=100,     zipfian   short ranges
                                scanlengthdistribution=uniform)
    F  read 0.5   readmodifywrite 0.5                  zipfian   read-modify-write

What this module specifies (bench/ycsb_workload.py draws with it; guest/apps/ycsb/
ycsb_mix.h is its C twin), following core/src/main/java/site/ycsb at that commit:
  - The operation: CoreWorkload.createOperationGenerator adds the non-zero proportions in
    the order READ, UPDATE, INSERT, SCAN, READMODIFYWRITE to a DiscreteGenerator, whose
    nextValue takes one uniform u and walks the list: pw = weight / sum; u < pw picks it,
    else u -= pw (`choose`). Java throws if rounding leaves u past the last entry
    (odds ~1e-17); here the last entry takes it.
  - Inserts take the keynums records, records + 1, ... (AcknowledgedCounterGenerator
    started at recordcount, acknowledged at once: one client thread).
  - zipfian keys: CoreWorkload's ScrambledZipfianGenerator over records + expectednewkeys
    keys, expectednewkeys = (int) (ops * insertproportion * 2.0), redrawn while beyond
    the last inserted keynum (CoreWorkload.nextKeynum). Without inserts this is exactly
    workload A's key chooser (bench/ycsb_workload.py, which states the shared deviation:
    a keyspace one key smaller than Java's).
  - latest keys (`LatestGenerator`): SkewedLatestGenerator over the insert counter:
    ZipfianGenerator(lastValue) built once (items = records - 1, zetan = zeta(items)),
    then each draw max - nextLong(max) with max the last inserted keynum. nextLong
    extends zetan incrementally when max grows and recomputes eta with the ORIGINAL
    items (YCSB's code does so), then draws u exactly as ScrambledZipfian's inner draw.
    Java's IEEE arithmetic is kept where Python would raise: x / 0, pow of a negative
    base, (long) NaN == 0 (tiny record counts reach them).
  - A scan's length is min + int(u * (max - min + 1)) for one uniform u, u drawn after
    the start key (YCSB: Math.abs(nextLong()) % interval + min; the same uniform choice,
    drawn the way this project draws an update's field).
Throw-away draws in YCSB's constructors are not made here, as for workload A.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

ZIPFIAN_CONSTANT = 0.99
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
YCSB_COMMIT = "d9faaac85a95acd4c650a3436ac41eeaeb49c365"


class Kind(IntEnum):
    """Operation kinds in CoreWorkload's order of proportions (also the C twin's enum)."""

    READ = 0
    UPDATE = 1
    INSERT = 2
    SCAN = 3
    RMW = 4


@dataclass(frozen=True, slots=True)
class CoreWorkload:
    """One of YCSB's workload property files, reduced to what the generator reads."""

    name: str  # "a" .. "f"
    proportions: tuple[float, float, float, float, float]  # indexed by Kind
    latest: bool = False  # requestdistribution=latest (else zipfian)
    min_scan: int = 1
    max_scan: int = 100

    @property
    def insert_proportion(self) -> float:
        return self.proportions[Kind.INSERT]

    def expected_new_keys(self, ops: int) -> int:
        """CoreWorkload's expectednewkeys: (int) ((opcount) * insertproportion * 2.0)."""
        return int(ops * self.insert_proportion * 2.0)


WORKLOADS: dict[str, CoreWorkload] = {
    "a": CoreWorkload("a", (0.5, 0.5, 0.0, 0.0, 0.0)),
    "b": CoreWorkload("b", (0.95, 0.05, 0.0, 0.0, 0.0)),
    "c": CoreWorkload("c", (1.0, 0.0, 0.0, 0.0, 0.0)),
    "d": CoreWorkload("d", (0.95, 0.0, 0.05, 0.0, 0.0), latest=True),
    "e": CoreWorkload("e", (0.0, 0.0, 0.05, 0.95, 0.0)),
    "f": CoreWorkload("f", (0.5, 0.0, 0.0, 0.0, 0.5)),
}
DEFAULT_WORKLOAD = "a"


def workload_named(name: str) -> CoreWorkload:
    """The core workload called `name` (a..f, any case); ValueError otherwise."""
    try:
        return WORKLOADS[name.lower()]
    except KeyError:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, not {name!r}") from None


def choose(u: float, workload: CoreWorkload) -> Kind:
    """DiscreteGenerator.nextValue for the draw u, Java's arithmetic step by step."""
    entries = [(w, Kind(k)) for k, w in enumerate(workload.proportions) if w > 0]
    total = 0.0
    for weight, _ in entries:
        total += weight
    for weight, kind in entries[:-1]:
        share = weight / total
        if u < share:
            return kind
        u -= share
    return entries[-1][1]


def ieee_div(num: float, den: float) -> float:
    """Java's (and C's) double division, where Python raises on a zero divisor."""
    if den != 0.0:
        return num / den
    if num == 0.0 or math.isnan(num):
        return math.nan
    return math.copysign(math.inf, num) * math.copysign(1.0, den)


def java_pow(base: float, exponent: float) -> float:
    """Math.pow: NaN for a negative base with a non-integer exponent (Python raises)."""
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


def java_long(value: float) -> int:
    """Java's (long) cast: truncation, NaN to 0, saturation at the long range."""
    if math.isnan(value):
        return 0
    if value >= 2.0**63:
        return LONG_MAX
    if value <= -(2.0**63):
        return LONG_MIN
    return int(value)


def zeta_sum(start: int, end: int, theta: float, initial: float) -> float:
    """ZipfianGenerator.zetastatic(st, n, theta, initialsum), in YCSB's order."""
    total = initial
    for i in range(start, end):
        total += 1 / math.pow(i + 1, theta)
    return total


class LatestGenerator:
    """SkewedLatestGenerator over the insert counter, bit for bit (C twin: ycsb_mix.h).

    Invariant: `next(last, draw)` returns a keynum in [0, last] and consumes exactly one
    draw; `last` never decreases (inserts only add keys).
    """

    __slots__ = ("_alpha", "_countforzeta", "_eta", "_items", "_theta", "_zeta2theta", "_zetan")

    def __init__(self, last: int) -> None:
        # ZipfianGenerator(items = last) -> ZipfianGenerator(0, last - 1): items = last.
        self._items = last
        self._theta = ZIPFIAN_CONSTANT
        self._zeta2theta = zeta_sum(0, 2, self._theta, 0.0)
        self._alpha = 1.0 / (1.0 - self._theta)
        self._zetan = zeta_sum(0, last, self._theta, 0.0)
        self._countforzeta = last
        self._eta = self._eta_now()

    def _eta_now(self) -> float:
        # YCSB recomputes eta with the constructor's items, not the current count.
        rise = 1 - java_pow(ieee_div(2.0, float(self._items)), 1 - self._theta)
        return ieee_div(rise, 1 - ieee_div(self._zeta2theta, self._zetan))

    @property
    def zetan(self) -> float:
        return self._zetan

    @property
    def eta(self) -> float:
        return self._eta

    def next(self, last: int, draw: Callable[[], float]) -> int:
        """SkewedLatestGenerator.nextValue with basis.lastValue() == last."""
        if last > self._countforzeta:
            self._zetan = zeta_sum(self._countforzeta, last, self._theta, self._zetan)
            self._countforzeta = last
            self._eta = self._eta_now()
        return last - self._inner(last, draw())

    def _inner(self, itemcount: int, u: float) -> int:
        """ZipfianGenerator.nextLong(itemcount) for the draw u (base 0)."""
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + math.pow(0.5, self._theta):
            return 1
        spread = java_pow(self._eta * u - self._eta + 1, self._alpha)
        return java_long(itemcount * spread)


def java_int(value: int) -> int:
    """Java's long.intValue(): the low 32 bits, signed (CoreWorkload.nextKeynum does it)."""
    return ((value + 2**31) & 0xFFFF_FFFF) - 2**31
