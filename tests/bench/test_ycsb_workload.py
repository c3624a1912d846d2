"""YCSB workload A: the Python twin's invariants, and exact agreement with the C twin.

Three layers:
  (a) the Python generator alone: YCSB's own values, ranges, determinism;
  (b) ycsb_gen.h, compiled into a small host driver (with glibc, and statically with
      musl as the guest is), prints streams, keys and zipfian draws that must equal the
      Python twin's text byte for byte;
  (c) ycsb.c + SQLite built for the host: its summary line and its database must equal
      run_native's, and expected_rows()'s pure replay.
The host sqlite3.o is compiled once and cached (toolchain.cache_root()/host-sqlite).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from underbridge.bench import ycsb_native as native_twin
from underbridge.bench import ycsb_workload as ycsb
from underbridge.bench.ycsb_native import YcsbSummary
from underbridge.bench.ycsb_workload import (
    FIELD_COUNT,
    FIELD_LENGTH,
    ZIPF,
    Read,
    Update,
    YcsbGenerator,
)
from underbridge.guestbuild.sqlite_source import amalgamation_dir
from underbridge.guestbuild.toolchain import cache_root, guest_root

YCSB_DIR = guest_root() / "apps" / "ycsb"
UINT64 = st.integers(0, 2**64 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
LONG_MIN = -(2**63)

# Utils.fnvhash64 from YCSB's own Utils.java (brianfrankcooper/YCSB, core/src/main),
# compiled and run under OpenJDK.
YCSB_FNVHASH64 = {
    0: 6284781860667377211,
    1: 8517097267634966620,
    2: 1820151046732198393,
    42: 55488592825689361,
    999: 2071219101098386137,
    123456789: 2350796791908741607,
    10_000_000_000: 1201321332300452516,
    -1: 8289690350564177859,
    LONG_MIN: 6284922598155788219,
    2**63 - 1: 8289549613075766851,
}

# ZipfianGenerator(0, ITEM_COUNT, 0.99, ZETAN).nextLong's arithmetic run under OpenJDK
# (Math.pow) for fixed draws u, given as IEEE bit patterns.
JAVA_ZIPF = {
    0x0000000000000000: 0,  # 0.0
    0x3F9EB851EB851EB8: 0,  # 0.03: uz < 1
    0x3FA999999999999A: 1,  # 0.05: uz < 1 + 0.5**theta
    0x3FE0000000000000: 134552,  # 0.5
    0x3FEFFFFDE7210BE9: 9999787803,  # 0.999999
    4606748191584834274: 3576280967,
    4596651736145909532: 101,
    4598968880476942136: 895,
}


def double_of(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def bits_of(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


# ---- (a) the Python generator --------------------------------------------------------


@pytest.mark.parametrize(("val", "expected"), YCSB_FNVHASH64.items())
def test_fnvhash64_matches_ycsb(val, expected):
    assert ycsb.fnvhash64(val) == expected
    assert ycsb.key_name(val) == f"user{expected}"


def test_first_key_is_the_familiar_ycsb_key():
    assert ycsb.key_name(0) == "user6284781860667377211"


@pytest.mark.parametrize(("bits", "expected"), JAVA_ZIPF.items())
def test_zipfian_inner_matches_java(bits, expected):
    assert ycsb.zipfian_inner(double_of(bits)) == expected


def test_zipf_constants_match_java():
    # Double.doubleToRawLongBits of YCSB's zeta2theta, alpha and eta under OpenJDK
    assert bits_of(ZIPF.zeta2theta) == 4609449881120024454
    assert bits_of(ZIPF.alpha) == 4636737291354636282
    assert bits_of(ZIPF.eta) == 4596813332236081462


@given(INT64)
def test_fnvhash64_is_java_abs_of_fnv1a(val):
    raw = ycsb.FNV_OFFSET_BASIS_64
    for octet in (val & ycsb.MASK64).to_bytes(8, "little"):
        raw = ((raw ^ octet) * ycsb.FNV_PRIME_64) & ycsb.MASK64
    hashed = ycsb.fnvhash64(val)
    assert hashed == ycsb.java_abs(raw)
    assert 0 <= hashed < 2**63 or (hashed == LONG_MIN and raw == 2**63)


def test_java_abs_keeps_long_min_value():
    assert ycsb.java_abs(2**63) == LONG_MIN
    assert ycsb.java_abs(2**64 - 1) == 1
    assert ycsb.java_abs(2**63 + 1) == 2**63 - 1


def _fnv_preimages_below_2_34(target_raw: int) -> list[int]:
    """Every val in [0, 2**34) whose raw FNV-1a hash is target_raw (meet in the middle).

    Such a val has octets b0..b3 free, b4 in 0..3 and b5..b7 zero, so the state after
    five octets must be target * prime**-3; we walk back over b4, b3, b2 and forward
    over b0, b1 and intersect the states after two octets.
    """
    mask, prime = ycsb.MASK64, ycsb.FNV_PRIME_64
    inverse = pow(prime, -1, 1 << 64)
    after5 = target_raw * pow(inverse, 3, 1 << 64) & mask
    back: dict[int, list[tuple[int, int, int]]] = {}
    for b4 in range(4):
        after4 = (after5 * inverse & mask) ^ b4
        for b3 in range(256):
            after3 = (after4 * inverse & mask) ^ b3
            for b2 in range(256):
                back.setdefault((after3 * inverse & mask) ^ b2, []).append((b2, b3, b4))
    found = []
    for b0 in range(256):
        after1 = (ycsb.FNV_OFFSET_BASIS_64 ^ b0) * prime & mask
        for b1 in range(256):
            for b2, b3, b4 in back.get((after1 ^ b1) * prime & mask, ()):
                found.append(int.from_bytes(bytes((b0, b1, b2, b3, b4)), "little"))
    return found


def test_no_reachable_input_hashes_to_long_min_value():
    """Java's negative `%` for Long.MIN_VALUE, where we floor, never happens here.

    Inner zipfian values lie in [0, 10**10 + 1] and keynums below records, all under
    2**34; no such input has the raw hash 2**63, so both remainders always agree.
    """
    probe = 12_345_678_901  # the search finds a known preimage: it is not vacuous
    raw = ycsb.FNV_OFFSET_BASIS_64
    for octet in probe.to_bytes(8, "little"):
        raw = ((raw ^ octet) * ycsb.FNV_PRIME_64) & ycsb.MASK64
    assert probe in _fnv_preimages_below_2_34(raw)
    assert ycsb.ZIPF_ITEMS < 2**34
    assert _fnv_preimages_below_2_34(2**63) == []


@given(UINT64)
def test_doubles_are_53_bit_fractions_in_unit_interval(seed):
    generator = YcsbGenerator(seed)
    for _ in range(16):
        u = generator.next_double()
        assert 0.0 <= u < 1.0
        assert (u * 2**53).is_integer()


@given(UINT64, st.integers(1, 2**40))
def test_keynums_are_in_range(seed, records):
    generator = YcsbGenerator(seed)
    for _ in range(50):
        assert 0 <= generator.next_keynum(records) < records


@given(UINT64)
def test_values_are_100_printable_characters(seed):
    generator = YcsbGenerator(seed)
    for _ in range(FIELD_COUNT):
        value = generator.next_value()
        assert len(value) == FIELD_LENGTH
        assert all(" " <= char <= "~" for char in value)


@given(UINT64, UINT64)
def test_streams_are_deterministic_per_seed(seed, other):
    first, second = YcsbGenerator(seed), YcsbGenerator(seed)
    assert [first.next_u64() for _ in range(8)] == [second.next_u64() for _ in range(8)]
    # splitmix64's output function is a bijection of state + gamma: seeds never collide
    assert (YcsbGenerator(seed).next_u64() == YcsbGenerator(other).next_u64()) == (seed == other)


def test_value_consumes_13_outputs():
    generator, reference = YcsbGenerator(5), YcsbGenerator(5)
    generator.next_value()
    for _ in range(ycsb.VALUE_OUTPUTS):
        reference.next_u64()
    assert generator.next_u64() == reference.next_u64()


@settings(max_examples=25)
@given(UINT64, st.integers(1, 300), st.integers(0, 200))
def test_operations_are_well_formed(seed, records, ops):
    load, operations = ycsb.workload(records, ops, seed)
    assert [key for key, _ in load] == [ycsb.key_name(k) for k in range(records)]
    assert len(operations) == ops
    for op in operations:
        assert 0 <= op.keynum < records
        assert op.key == ycsb.key_name(op.keynum)
        if isinstance(op, Update):
            assert 0 <= op.field < FIELD_COUNT
            assert len(op.value) == FIELD_LENGTH


def test_operations_draw_the_spec_order():
    """u, key, then (updates only) field and value: checked against a hand replay."""
    generator = YcsbGenerator(11)
    list(generator.load_records(3))
    manual = YcsbGenerator(11)
    list(manual.load_records(3))
    for op in generator.operations(3, 40):
        u = manual.next_double()
        keynum = ycsb.scramble(ycsb.zipfian_inner(manual.next_double()), 3)
        assert op.keynum == keynum
        if u < 0.5:
            assert isinstance(op, Read)
        else:
            assert isinstance(op, Update)
            assert op.field == int(manual.next_double() * 10)
            assert op.value == manual.next_value()


def test_zipfian_head_has_the_expected_weight():
    """Item 0 has probability 1/zetan (3.78%), item 1 2**-0.99/zetan (1.90%)."""
    generator, draws = YcsbGenerator(3), 40_000
    counts = Counter(ycsb.zipfian_inner(generator.next_double()) for _ in range(draws))
    assert counts[0] / draws == pytest.approx(1 / ycsb.ZETAN, abs=0.004)
    assert counts[1] / draws == pytest.approx(0.5**0.99 / ycsb.ZETAN, abs=0.003)
    assert max(counts) <= ycsb.ZIPF_ITEMS


def test_read_proportion_is_about_half():
    _, operations = ycsb.workload(10, 4000, 21)
    reads = sum(isinstance(op, Read) for op in operations)
    assert reads / 4000 == pytest.approx(0.5, abs=0.03)


@given(
    st.builds(
        YcsbSummary,
        st.sampled_from("abcdef"),
        st.integers(1, 2**40),
        st.integers(0, 2**40),
        UINT64,
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        UINT64,
    )
)
def test_summary_line_round_trips(summary):
    line = summary.line()
    assert line.endswith("\n") and line.count("\n") == 1
    assert YcsbSummary.parse(f"noise\n{line}more noise\n") == summary


def test_summary_line_format():
    summary = YcsbSummary("a", 200, 300, 7, 157, 143, 0, 0, 0, 0, 0xC4C48E025D7B9749)
    assert summary.line() == (
        "ycsb: workload=a records=200 ops=300 seed=7 reads=157 updates=143 "
        "inserts=0 scans=0 rmws=0 misses=0 checksum=c4c48e025d7b9749\n"
    )


@pytest.mark.parametrize(
    "text", ["", "ycsb: records=1\n", YcsbSummary("a", 1, 1, 1, 1, 0, 0, 0, 0, 0, 1).line() * 2]
)
def test_summary_parse_rejects_missing_or_ambiguous(text):
    with pytest.raises(ValueError, match="summary"):
        YcsbSummary.parse(text)


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError):
        YcsbGenerator(2**64)
    with pytest.raises(ValueError):
        list(YcsbGenerator(1).load_records(0))
    with pytest.raises(ValueError):
        list(YcsbGenerator(1).operations(1, -1))


def test_run_native_in_memory_gives_the_same_summary(tmp_path):
    assert native_twin.run_native(None, 30, 60, 4) == native_twin.run_native(
        tmp_path / "y.db", 30, 60, 4
    )


def test_run_native_refuses_an_existing_table(tmp_path):
    db_path = tmp_path / "y.db"
    native_twin.run_native(db_path, 3, 3, 1)
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        native_twin.run_native(db_path, 3, 3, 1)


# ---- building C ------------------------------------------------------------------------

WARNINGS = ("-Wall", "-Wextra", "-Werror")
# Python rounds every operation; C must too (ycsb_gen.h insists on it for FMA targets).
FP_FLAGS = ("-ffp-contract=off", "-DYCSB_FP_CONTRACT_OFF")
# The guest's musl build: static, baseline x86-64 (toolchain.MUSL_COMPILE_FLAGS).
LIBCS = {"glibc": ("gcc", ()), "musl": ("musl-gcc", ("-static", "-march=x86-64"))}
SQLITE_FLAGS = ("-O1", "-DSQLITE_THREADSAFE=0", "-DSQLITE_OMIT_LOAD_EXTENSION")


def compiler_for(libc: str) -> tuple[str, tuple[str, ...]]:
    compiler, flags = LIBCS[libc]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    return compiler, flags


def run_compiler(compiler: str, *args: str | Path) -> None:
    result = subprocess.run(
        [compiler, *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{compiler} failed:\n{result.stderr}")


def host_sqlite_object(libc: str) -> Path:
    """sqlite3.c compiled for the host, cached by the sha256 of its bytes and the build.

    Many pytest-xdist workers may want it at once: a lock lets one compile while the
    others wait, and the object appears only by atomic rename, so a file at the cache
    path is always complete.
    """
    compiler, libc_flags = compiler_for(libc)
    source = amalgamation_dir() / "sqlite3.c"
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    key = hashlib.sha256(source.read_bytes())
    key.update("\0".join([version, compiler, *libc_flags, *SQLITE_FLAGS]).encode())
    target = cache_root() / "host-sqlite" / key.hexdigest() / "sqlite3.o"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".o.partial")
            os.close(fd)
            try:
                run_compiler(compiler, *libc_flags, *SQLITE_FLAGS, "-c", source, "-o", partial)
                os.replace(partial, target)
            finally:
                Path(partial).unlink(missing_ok=True)
    return target


# ---- (b) the C generator against the Python one -------------------------------------

DRIVER = r"""
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ycsb_gen.h"

static uint64_t bits_of(double d) { uint64_t b; memcpy(&b, &d, sizeof b); return b; }
static double double_of(uint64_t b) { double d; memcpy(&d, &b, sizeof d); return d; }

void ycsb_mark(void) {}

/* The constants, 4 raw outputs and doubles, then the whole workload's draws. */
static void stream(uint64_t seed, int64_t records, long ops)
{
    struct ycsb_zipf zipf;
    struct ycsb_rng rng;
    struct ycsb_op op;
    char key[YCSB_KEY_MAX], value[YCSB_FIELD_LENGTH];

    ycsb_zipf_init(&zipf);
    printf("C %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64 "\n",
           bits_of(zipf.zeta2theta), bits_of(zipf.alpha), bits_of(zipf.eta),
           bits_of(zipf.one_threshold));
    ycsb_rng_seed(&rng, seed);
    for (int i = 0; i < 4; i++) {
        uint64_t raw = ycsb_next_u64(&rng);
        printf("N %016" PRIx64 " %016" PRIx64 "\n", raw, bits_of(ycsb_next_double(&rng)));
    }
    ycsb_rng_seed(&rng, seed);
    for (int64_t keynum = 0; keynum < records; keynum++) {
        ycsb_key_name(keynum, key);
        printf("K %s\n", key);
        for (int f = 0; f < YCSB_FIELD_COUNT; f++) {
            ycsb_next_value(&rng, value);
            printf("V %.*s\n", YCSB_FIELD_LENGTH, value);
        }
    }
    for (long i = 0; i < ops; i++) {
        ycsb_next_op(&rng, &zipf, records, &op);
        ycsb_key_name(op.keynum, key);
        if (op.kind == YCSB_READ)
            printf("R %" PRId64 " %s\n", op.keynum, key);
        else
            printf("U %" PRId64 " %s %d\nV %.*s\n", op.keynum, key, op.field,
                   YCSB_FIELD_LENGTH, op.value);
    }
}

/* n key choices from a fresh stream: the inner zipfian value and the keynum. */
static void keys(uint64_t seed, int64_t records, long n)
{
    struct ycsb_zipf zipf;
    struct ycsb_rng rng;
    ycsb_zipf_init(&zipf);
    ycsb_rng_seed(&rng, seed);
    for (long i = 0; i < n; i++) {
        int64_t inner = ycsb_zipf_inner(&zipf, ycsb_next_double(&rng));
        printf("%" PRId64 " %" PRId64 "\n", inner, ycsb_scramble(inner, records));
    }
}

/* Filters over stdin, one number a line. */
static void filter(const char *mode)
{
    struct ycsb_zipf zipf;
    char key[YCSB_KEY_MAX];
    char line[64];
    ycsb_zipf_init(&zipf);
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strcmp(mode, "hash") == 0) {
            int64_t val = strtoll(line, NULL, 10);
            ycsb_key_name(val, key);
            printf("%" PRId64 " %s\n", ycsb_fnvhash64(val), key);
        } else if (strcmp(mode, "abs") == 0) {
            int64_t hash = ycsb_java_abs(strtoull(line, NULL, 16));
            ycsb_format_key(hash, key);
            printf("%" PRId64 " %s\n", hash, key);
        } else { /* zipf: the item, pow's base and pow's result */
            double u = double_of(strtoull(line, NULL, 16));
            double base = ycsb_zipf_base(&zipf, u);
            printf("%" PRId64 " %016" PRIx64 " %016" PRIx64 "\n", ycsb_zipf_inner(&zipf, u),
                   bits_of(base), bits_of(pow(base, zipf.alpha)));
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "stream") == 0)
        stream(strtoull(argv[2], NULL, 10), strtoll(argv[3], NULL, 10),
               strtol(argv[4], NULL, 10));
    else if (argc == 5 && strcmp(argv[1], "keys") == 0)
        keys(strtoull(argv[2], NULL, 10), strtoll(argv[3], NULL, 10),
             strtol(argv[4], NULL, 10));
    else if (argc == 2)
        filter(argv[1]);
    else
        return 2;
    return 0;
}
"""


class Driver(NamedTuple):
    libc: str
    exe: Path


@pytest.fixture(scope="session", params=list(LIBCS))
def driver(request, tmp_path_factory) -> Driver:
    """The host driver over ycsb_gen.h, per libc (musl: static, as in the guest)."""
    compiler, flags = compiler_for(request.param)
    out = tmp_path_factory.mktemp(f"ycsb-driver-{request.param}")
    source = out / "driver.c"
    source.write_text(DRIVER)
    exe = out / "driver"
    run_compiler(
        compiler,
        *flags,
        "-std=gnu17",
        "-O2",
        *WARNINGS,
        *FP_FLAGS,
        f"-I{YCSB_DIR}",
        source,
        "-o",
        exe,
        "-lm",
    )
    return Driver(request.param, exe)


def run_driver(driver: Driver, *args: object, stdin: str | None = None) -> str:
    return subprocess.run(
        [driver.exe, *map(str, args)], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def expected_stream(seed: int, records: int, ops: int) -> str:
    """The Python twin's rendering of what the driver's `stream` mode prints."""
    lines = [
        "C "
        + " ".join(
            f"{bits_of(x):016x}"
            for x in (ZIPF.zeta2theta, ZIPF.alpha, ZIPF.eta, ZIPF.one_threshold)
        )
    ]
    raw = YcsbGenerator(seed)
    for _ in range(4):
        lines.append(f"N {raw.next_u64():016x} {bits_of(raw.next_double()):016x}")
    load, operations = ycsb.workload(records, ops, seed)
    for key, fields in load:
        lines += [f"K {key}", *(f"V {value}" for value in fields)]
    for op in operations:
        if isinstance(op, Read):
            lines.append(f"R {op.keynum} {op.key}")
        else:
            lines += [f"U {op.keynum} {op.key} {op.field}", f"V {op.value}"]
    return "\n".join(lines) + "\n"


def assert_same_lines(actual: str, expected: str) -> None:
    """Equal texts, or a failure naming the first differing line (not a 100 kB diff)."""
    if actual == expected:
        return
    got, want = actual.splitlines(), expected.splitlines()
    for number, (a, b) in enumerate(zip(got, want, strict=False)):
        assert a == b, f"line {number + 1} differs"
    assert len(got) == len(want), "different line counts"


@settings(max_examples=6, deadline=None)
@example(seed=0, records=1, ops=20)
@example(seed=2**64 - 1, records=7, ops=50)
@given(seed=UINT64, records=st.integers(1, 60), ops=st.integers(0, 150))
def test_c_stream_matches_python(driver, seed, records, ops):
    assert_same_lines(
        run_driver(driver, "stream", seed, records, ops), expected_stream(seed, records, ops)
    )


@settings(max_examples=6, deadline=None)
@example(seed=7, records=1)
@given(seed=UINT64, records=st.integers(1, 2**62))
def test_c_key_choices_match_python(driver, seed, records):
    generator, draws = YcsbGenerator(seed), 2000
    expected = []
    for _ in range(draws):
        inner = ycsb.zipfian_inner(generator.next_double())
        expected.append(f"{inner} {ycsb.scramble(inner, records)}")
    assert_same_lines(run_driver(driver, "keys", seed, records, draws), "\n".join(expected) + "\n")


@settings(max_examples=5, deadline=None)
@given(st.lists(INT64, min_size=1, max_size=200))
def test_c_fnvhash64_matches_python(driver, values):
    values = [*values, *YCSB_FNVHASH64]
    stdin = "".join(f"{v}\n" for v in values)
    expected = "".join(f"{ycsb.fnvhash64(v)} {ycsb.key_name(v)}\n" for v in values)
    assert run_driver(driver, "hash", stdin=stdin) == expected


def test_c_java_abs_matches_python(driver):
    raws = [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 0xCBF29CE484222325]
    stdin = "".join(f"{raw:x}\n" for raw in raws)
    expected = "".join(f"{ycsb.java_abs(r)} user{ycsb.java_abs(r)}\n" for r in raws)
    assert run_driver(driver, "abs", stdin=stdin) == expected
    assert "user-9223372036854775808" in expected


def zipf_probe_doubles() -> list[float]:
    """Uniform draws plus the doubles around every branch threshold and both ends."""
    generator = YcsbGenerator(0x5EED)
    probes = [generator.next_double() for _ in range(100_000)]
    edges = [0.0, 1 - 2**-53, 1 / ZIPF.zetan, ZIPF.one_threshold / ZIPF.zetan]
    for edge in edges:
        below = above = edge
        for _ in range(4):
            below, above = math.nextafter(below, 0.0), math.nextafter(above, 1.0)
            probes += [below, above]
        probes.append(edge)
    return [u for u in probes if 0.0 <= u < 1.0]


def test_c_zipfian_matches_python_on_many_draws(driver):
    """Items and pow's bases agree bit for bit; pow itself too, with the same libm.

    musl's pow (the guest's) and glibc's are one algorithm, but glibc picks an FMA build
    on FMA hosts, which is 1 ulp off on ~0.07% of these inputs; an item moves only if
    that ulp also crosses an integer of items * pow (odds ~1e-6 per such input).
    """
    probes = zipf_probe_doubles()
    stdin = "".join(f"{bits_of(u):x}\n" for u in probes)
    got = run_driver(driver, "zipf", stdin=stdin).splitlines()
    assert len(got) == len(probes)
    pow_differences = 0
    for line, u in zip(got, probes, strict=True):
        inner, base_bits, pow_bits = line.split()
        base = ycsb.zipfian_base(u)
        assert (int(inner), int(base_bits, 16)) == (ycsb.zipfian_inner(u), bits_of(base)), u
        ulps = int(pow_bits, 16) - bits_of(math.pow(base, ZIPF.alpha))
        if driver.libc == "glibc":
            assert ulps == 0, u
        assert abs(ulps) <= 1, u
        pow_differences += ulps != 0
    assert pow_differences <= len(probes) // 200


# ---- (c) the C program on the host against run_native --------------------------------

HOST_MARK = r"""
#include <unistd.h>
void ycsb_mark(void);
/* Host stand-in for the guest's marker: a line on stderr, so tests can count them. */
void ycsb_mark(void) { (void)!write(2, "ycsb-mark\n", 10); }
"""
CASES = [(200, 300, 7), (200, 300, 0xDEADBEEFCAFEF00D), (1, 25, 0)]


@pytest.fixture(scope="session", params=list(LIBCS))
def ycsb_program(request, tmp_path_factory) -> Path:
    """ycsb.c + SQLite for the host (the musl build is static, like the guest's)."""
    compiler, flags = compiler_for(request.param)
    sqlite_object = host_sqlite_object(request.param)
    out = tmp_path_factory.mktemp(f"ycsb-program-{request.param}")
    mark = out / "mark_host.c"
    mark.write_text(HOST_MARK)
    exe = out / "ycsb"
    run_compiler(
        compiler,
        *flags,
        "-std=gnu17",
        "-O1",
        *WARNINGS,
        *FP_FLAGS,
        f"-I{amalgamation_dir()}",
        f"-I{YCSB_DIR}",
        YCSB_DIR / "ycsb.c",
        YCSB_DIR / "ycsb_mix.c",
        mark,
        sqlite_object,
        "-o",
        exe,
        "-lm",
    )
    return exe


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "-".join(map(str, case)))
def native(request, tmp_path_factory) -> tuple[tuple[int, int, int], YcsbSummary, Path]:
    """One case run natively: its arguments, summary and database."""
    db_path = tmp_path_factory.mktemp("ycsb-native") / "native.db"
    return request.param, native_twin.run_native(db_path, *request.param), db_path


def integrity(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def test_native_run_matches_pure_replay(native):
    case, summary, db_path = native
    replayed, rows = native_twin.replay(*case)
    assert replayed == summary
    assert summary.reads + summary.updates == summary.ops
    assert summary.misses == 0  # every key chosen was loaded
    assert native_twin.read_rows(db_path) == rows
    assert integrity(db_path) == "ok"


def test_c_program_matches_native(ycsb_program, native, tmp_path):
    (records, ops, seed), summary, native_db = native
    db_path = tmp_path / "c.db"
    result = subprocess.run(
        [ycsb_program, str(records), str(ops), str(seed), str(db_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == summary.line()
    assert YcsbSummary.parse(result.stdout) == summary
    assert result.stderr == "ycsb-mark\n" * 4
    rows = native_twin.read_rows(db_path)
    assert rows == native_twin.expected_rows(records, ops, seed)
    assert rows == native_twin.read_rows(native_db)
    assert integrity(db_path) == "ok"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["1", "1"],
        ["1", "1", "1", "a.db", "a", "extra"],
        ["1", "1", "1", "a.db", "g"],
        ["1", "1", "1", "a.db", "ab"],
        ["1", "1", "1", "a.db", ""],
        ["0", "1", "1", "a.db", "b"],
        ["0", "1", "1"],
        ["1", "-1", "1"],
        ["1", "1", "-1"],
        ["x", "1", "1"],
        ["1", "1", "18446744073709551616"],
        ["1", "1", ""],
        ["9223372036854775808", "1", "1"],
    ],
)
def test_c_program_usage_errors(ycsb_program, tmp_path, args):
    result = subprocess.run(
        [ycsb_program, *args], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ycsb RECORDS OPS SEED [DBPATH [WORKLOAD]]")
    assert result.stdout == ""


def test_c_program_reports_sqlite_errors(ycsb_program, tmp_path):
    db_path = tmp_path / "twice.db"
    args = [ycsb_program, "3", "3", "1", str(db_path)]
    assert subprocess.run(args, capture_output=True, check=False).returncode == 0
    again = subprocess.run(args, capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert again.stderr == "ycsb: CREATE TABLE: table usertable already exists\n"
    assert again.stdout == ""
    missing = subprocess.run(
        [*args[:-1], str(tmp_path / "no" / "such" / "dir.db")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("ycsb: open: ")
