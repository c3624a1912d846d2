"""YCSB's core workloads A-F: the twin's rules, C against Python, and the guest per design.

Four layers, as for workload A (tests/bench/test_ycsb_workload.py, whose builders these
reuse):
  (a) bench/ycsb_core.py alone: YCSB's property files, the chooser, `latest`;
  (b) ycsb_mix.h in a host driver (glibc, and static musl as in the guest) prints every
      workload's operations, which must equal YcsbGenerator.operations' byte for byte;
      and A through ycsb_next_mix_op equals A through ycsb_next_op;
  (c) ycsb.c + ycsb_mix.c + SQLite on the host: summary and table equal run_native's;
  (d) the guest under sel4 and underbridge, database out of the fs checked, and A's
      figures pinned at a small size (adding B-F left A's measured loop as it was).
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.bench.test_ycsb_workload import (
    FP_FLAGS,
    HOST_MARK,
    LIBCS,
    WARNINGS,
    YCSB_DIR,
    assert_same_lines,
    compiler_for,
    host_sqlite_object,
    run_compiler,
)
from underbridge.bench import ycsb
from underbridge.bench.ycsb_core import (
    WORKLOADS,
    Kind,
    LatestGenerator,
    choose,
    java_int,
    java_long,
    workload_named,
)
from underbridge.bench.ycsb_native import expected_rows, read_rows, replay, run_native
from underbridge.bench.ycsb_workload import (
    Insert,
    Read,
    ReadModifyWrite,
    Scan,
    Update,
    YcsbGenerator,
    key_name,
)
from underbridge.bench.ycsb_workload import (
    workload as make_workload,
)
from underbridge.guestbuild.sqlite_source import amalgamation_dir

NAMES = list(WORKLOADS)

# brianfrankcooper/YCSB workloads/workloada..workloadf: read, update, insert, scan,
# readmodifywrite proportions and requestdistribution, as the files state them.
YCSB_FILES = {
    "a": ((0.5, 0.5, 0, 0, 0), "zipfian"),
    "b": ((0.95, 0.05, 0, 0, 0), "zipfian"),
    "c": ((1, 0, 0, 0, 0), "zipfian"),
    "d": ((0.95, 0, 0.05, 0, 0), "latest"),
    "e": ((0, 0, 0.05, 0.95, 0), "zipfian"),
    "f": ((0.5, 0, 0, 0, 0.5), "zipfian"),
}


# ---- (a) the Python rules ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_workloads_are_ycsbs_property_files(name):
    proportions, distribution = YCSB_FILES[name]
    spec = workload_named(name.upper())
    assert spec.proportions == proportions
    assert spec.latest == (distribution == "latest")
    assert (spec.min_scan, spec.max_scan) == (1, 100)  # E's maxscanlength=100


def test_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="workload must be one of a, b, c, d, e, f"):
        workload_named("g")


@given(st.floats(0.0, 1.0, exclude_max=True))
def test_chooser_follows_the_cumulative_proportions(u):
    assert choose(u, WORKLOADS["a"]) is (Kind.READ if u < 0.5 else Kind.UPDATE)
    assert choose(u, WORKLOADS["b"]) is (Kind.READ if u < 0.95 else Kind.UPDATE)
    assert choose(u, WORKLOADS["c"]) is Kind.READ
    assert choose(u, WORKLOADS["d"]) is (Kind.READ if u < 0.95 else Kind.INSERT)
    assert choose(u, WORKLOADS["e"]) is (Kind.INSERT if u < 0.05 else Kind.SCAN)
    assert choose(u, WORKLOADS["f"]) is (Kind.READ if u < 0.5 else Kind.RMW)


def test_chooser_gives_the_last_kind_what_rounding_leaves():
    assert choose(1 - 2**-53, WORKLOADS["b"]) is Kind.UPDATE  # Java would throw here


KINDS = {Read: Kind.READ, Update: Kind.UPDATE, Insert: Kind.INSERT, Scan: Kind.SCAN}
KINDS[ReadModifyWrite] = Kind.RMW


@pytest.mark.parametrize("name", NAMES)
def test_operation_mix_has_the_published_proportions(name):
    generator, records, ops = YcsbGenerator(17), 100, 4000
    list(generator.load_records(records))
    counts = Counter(KINDS[type(op)] for op in generator.operations(records, ops, name))
    for kind, share in zip(Kind, WORKLOADS[name].proportions, strict=True):
        assert counts[kind] / ops == pytest.approx(share, abs=0.02)


@pytest.mark.parametrize("name", NAMES)
def test_keys_exist_when_chosen_and_inserts_count_up(name):
    records, ops = 40, 600
    _, operations = make_workload(records, ops, 5, name)
    last = records - 1
    for op in operations:
        if isinstance(op, Insert):
            last += 1
            assert op.keynum == last and op.key == key_name(last) and len(op.values) == 10
        else:
            assert 0 <= op.keynum <= last and op.key == key_name(op.keynum)
        if isinstance(op, Scan):
            assert 1 <= op.length <= 100
    summary, rows = replay(records, ops, 5, name)
    assert summary.misses == 0 and len(rows) == last + 1


def test_latest_prefers_the_newest_records():
    generator, last = YcsbGenerator(3), 999
    latest = LatestGenerator(last)
    draws = Counter(latest.next(last, generator.next_double) for _ in range(20_000))
    assert draws.most_common(1)[0][0] == last  # 1 / zetan of all draws
    assert draws[last] / 20_000 == pytest.approx(1 / latest.zetan, abs=0.005)
    assert min(draws) >= 0 and max(draws) <= last


@pytest.mark.parametrize("records", [1, 2, 3])
def test_latest_keeps_javas_arithmetic_for_tiny_tables(records):
    """items 0 divides by zero, items 2 gives 0/0: Java's NaN and (long) rules, no raise."""
    summary, rows = replay(records, 200, 9, "d")
    assert summary.reads + summary.inserts == 200
    assert len(rows) == records + summary.inserts


def test_java_casts():
    assert java_long(float("nan")) == 0
    assert java_long(1e300) == 2**63 - 1 and java_long(-1e300) == -(2**63)
    assert java_long(-2.7) == -2
    assert java_int(2**32 + 5) == 5 and java_int(2**31) == -(2**31)


# ---- (b) the C generator against the Python one -------------------------------------

MIX_DRIVER = r"""
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ycsb_mix.h"

void ycsb_mark(void) {}

static void print_op(const struct ycsb_mix_op *m)
{
    const struct ycsb_op *op = &m->op;
    char key[YCSB_KEY_MAX];
    ycsb_key_name(op->keynum, key);
    switch (op->kind) {
    case YCSB_READ:
        printf("R %" PRId64 " %s\n", op->keynum, key);
        break;
    case YCSB_SCAN:
        printf("S %" PRId64 " %s %" PRId64 "\n", op->keynum, key, m->length);
        break;
    case YCSB_INSERT:
        printf("I %" PRId64 " %s\n", op->keynum, key);
        for (int f = 0; f < YCSB_FIELD_COUNT; f++)
            printf("V %.*s\n", YCSB_FIELD_LENGTH, m->values[f]);
        break;
    default:
        printf("%c %" PRId64 " %s %d\nV %.*s\n", op->kind == YCSB_UPDATE ? 'U' : 'M',
               op->keynum, key, op->field, YCSB_FIELD_LENGTH, op->value);
    }
}

/* argv: mix|a SEED RECORDS OPS [LETTER]: the load's draws, then the operations, either
 * through ycsb_next_mix_op (mix) or workload A's ycsb_next_op (a). */
int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    uint64_t seed = strtoull(argv[2], NULL, 10);
    int64_t records = strtoll(argv[3], NULL, 10);
    long ops = strtol(argv[4], NULL, 10);
    struct ycsb_rng rng;
    struct ycsb_mix_op m;
    char value[YCSB_FIELD_LENGTH];
    ycsb_rng_seed(&rng, seed);
    for (int64_t i = 0; i < records * YCSB_FIELD_COUNT; i++)
        ycsb_next_value(&rng, value);
    if (strcmp(argv[1], "a") == 0) {
        struct ycsb_zipf zipf;
        ycsb_zipf_init(&zipf);
        for (long i = 0; i < ops; i++) {
            ycsb_next_op(&rng, &zipf, records, &m.op);
            print_op(&m);
        }
        return 0;
    }
    const struct ycsb_workload *w = NULL;
    for (int i = 0; i < YCSB_WORKLOADS; i++)
        if (ycsb_workloads[i].name == argv[5][0])
            w = &ycsb_workloads[i];
    if (w == NULL)
        return 2;
    struct ycsb_mix mix;
    ycsb_mix_init(&mix, w, records, ops);
    for (long i = 0; i < ops; i++) {
        ycsb_next_mix_op(&rng, &mix, &m);
        print_op(&m);
    }
    return 0;
}
"""


@pytest.fixture(scope="module", params=list(LIBCS))
def mix_driver(request, tmp_path_factory) -> Path:
    compiler, flags = compiler_for(request.param)
    out = tmp_path_factory.mktemp(f"ycsb-mix-driver-{request.param}")
    source = out / "driver.c"
    source.write_text(MIX_DRIVER)
    exe = out / "driver"
    run_compiler(
        compiler, *flags, "-std=gnu17", "-O2", *WARNINGS, *FP_FLAGS, f"-I{YCSB_DIR}", source,
        "-o", exe, "-lm",
    )  # fmt: skip
    return exe


def python_stream(seed: int, records: int, ops: int, name: str) -> str:
    """The Python twin's operations in the driver's format."""
    _, operations = make_workload(records, ops, seed, name)
    lines = []
    for op in operations:
        if isinstance(op, Read):
            lines.append(f"R {op.keynum} {op.key}")
        elif isinstance(op, Scan):
            lines.append(f"S {op.keynum} {op.key} {op.length}")
        elif isinstance(op, Insert):
            lines += [f"I {op.keynum} {op.key}", *(f"V {v}" for v in op.values)]
        else:
            letter = "U" if isinstance(op, Update) else "M"
            lines += [f"{letter} {op.keynum} {op.key} {op.field}", f"V {op.value}"]
    return "".join(line + "\n" for line in lines)


def run_mix_driver(driver: Path, *args: object) -> str:
    return subprocess.run(
        [driver, *map(str, args)], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None)
@example(seed=1, records=50, ops=300)
@example(seed=2**64 - 1, records=1, ops=120)
@example(seed=0, records=2, ops=120)
@example(seed=7, records=3, ops=120)
@given(seed=st.integers(0, 2**64 - 1), records=st.integers(1, 80), ops=st.integers(0, 200))
def test_c_mix_stream_matches_python(mix_driver, name, seed, records, ops):
    assert_same_lines(
        run_mix_driver(mix_driver, "mix", seed, records, ops, name),
        python_stream(seed, records, ops, name),
    )


@settings(max_examples=4, deadline=None)
@example(seed=1, records=1000, ops=1000)
@given(seed=st.integers(0, 2**64 - 1), records=st.integers(1, 300), ops=st.integers(0, 300))
def test_workload_a_is_the_same_through_either_c_path(mix_driver, seed, records, ops):
    """ycsb.c runs A through ycsb_next_op; ycsb_next_mix_op with A draws the very same."""
    through_a = run_mix_driver(mix_driver, "a", seed, records, ops)
    assert through_a == run_mix_driver(mix_driver, "mix", seed, records, ops, "a")
    assert_same_lines(through_a, python_stream(seed, records, ops, "a"))


# ---- (c) the C program on the host against run_native --------------------------------


@pytest.fixture(scope="module")
def host_program(tmp_path_factory) -> Path:
    """ycsb.c + ycsb_mix.c + SQLite, statically against musl as in the guest."""
    compiler, flags = compiler_for("musl")
    out = tmp_path_factory.mktemp("ycsb-mix-program")
    mark = out / "mark_host.c"
    mark.write_text(HOST_MARK)
    exe = out / "ycsb"
    run_compiler(
        compiler, *flags, "-std=gnu17", "-O1", *WARNINGS, *FP_FLAGS,
        f"-I{amalgamation_dir()}", f"-I{YCSB_DIR}", YCSB_DIR / "ycsb.c",
        YCSB_DIR / "ycsb_mix.c", mark, host_sqlite_object("musl"), "-o", exe, "-lm",
    )  # fmt: skip
    return exe


def integrity(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.parametrize("name", NAMES)
def test_c_program_matches_native(host_program, tmp_path, name):
    records, ops, seed = 120, 250, 11
    db_path, native_db = tmp_path / "c.db", tmp_path / "native.db"
    result = subprocess.run(
        [host_program, str(records), str(ops), str(seed), str(db_path), name.upper()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "ycsb-mark\n" * 4
    assert result.stdout == run_native(native_db, records, ops, seed, name).line()
    rows = read_rows(db_path)
    assert rows == expected_rows(records, ops, seed, name) == read_rows(native_db)
    assert integrity(db_path) == "ok"


# ---- (d) the guest, under each design ------------------------------------------------

GUEST_RECORDS, GUEST_OPS, GUEST_SEED = 50, 50, 1


@pytest.mark.parametrize("mode", ycsb.MODES)  # every design, as issue 13 asks
@pytest.mark.parametrize("name", NAMES)
def test_guest_workload_checks_out(tmp_path, mode, name):
    db = tmp_path / "out.db"
    result = ycsb.run(mode, GUEST_RECORDS, GUEST_OPS, GUEST_SEED, name, db_out=db)
    native = run_native(None, GUEST_RECORDS, GUEST_OPS, GUEST_SEED, name)
    assert result.workload == name and result.summary == native.line()
    assert read_rows(db) == expected_rows(GUEST_RECORDS, GUEST_OPS, GUEST_SEED, name)
    assert integrity(db) == "ok" and result.fs_check == []
    assert result.sim_cycles_per_op is not None and result.sim_cycles_per_op > 0


def test_workload_a_figures_are_those_measured_before_b_to_f():
    """sel4, 200 x 200, seed 1, measured on the tree before the workload argument existed:
    the dispatch to B-F must leave A's measured instructions exactly as they were."""
    result = ycsb.run("sel4", 200, 200, 1, "a")
    assert (result.sim_cycles_per_op, result.load_sim_cycles) == (117_582.425, 9_006_272)
