"""`bench ycsb` at a small size: SQLite inside the microkernel, under every IPC design.

Real everything: the ycsb guest (SQLite + musl + the IPC VFS) on the emulated CPU, the
fs and RAM-disk servers, the database copied out of the RAM disk and opened with the
host's SQLite. The 1,000 x 1,000 run the issue times is `underbridge bench ycsb`.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from underbridge.bench import ycsb
from underbridge.bench.ycsb_native import expected_rows, read_rows, run_native
from underbridge.cli import main

RECORDS, OPS, SEED = 60, 60, 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ycsb.YcsbResult, Path]]:
    out = tmp_path_factory.mktemp("ycsb")
    results = {}
    for mode in ycsb.MODES:
        db = out / f"{mode}.db"
        results[mode] = (ycsb.run(mode, RECORDS, OPS, SEED, db_out=db), db)
    return results


@pytest.mark.parametrize("mode", ycsb.MODES)
def test_database_out_of_the_fs_equals_the_native_run(
    runs: dict[str, tuple[ycsb.YcsbResult, Path]], mode: str, tmp_path: Path
) -> None:
    result, db = runs[mode]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    native_db = tmp_path / "native.db"
    native = run_native(native_db, RECORDS, OPS, SEED)
    assert result.summary == native.line()
    rows = read_rows(db)
    assert len(rows) == RECORDS
    assert rows == read_rows(native_db) == expected_rows(RECORDS, OPS, SEED)
    assert result.fs_check == []


@pytest.mark.parametrize("mode", ycsb.MODES)
def test_report_is_complete_and_consistent(
    runs: dict[str, tuple[ycsb.YcsbResult, Path]], mode: str
) -> None:
    result, _ = runs[mode]
    assert result.sim_ops_per_sec == pytest.approx(ycsb.NOMINAL_HZ / result.sim_cycles_per_op)
    parts = result.breakdown
    assert {"application", "ipc", "kernel", "server"} <= set(parts)
    whole = sum(v for k, v in parts.items() if ":" not in k)  # per-server rows are a split
    assert whole == pytest.approx(result.sim_cycles_per_op)
    assert parts.get("other", 0.0) == 0.0  # every executed block belongs somewhere
    assert parts["application"] > 0 and parts["server"] > 0 and parts["ipc"] > 0
    # Every op reaches the fs; updates also write through to the block device.
    assert result.calls_per_op["fs"] >= 1 and result.calls_per_op["ramdisk"] > 0
    assert result.ipc_calls_per_op == pytest.approx(sum(result.calls_per_op.values()))
    assert result.wall_ops_per_sec > 0


def test_underbridge_has_the_highest_throughput_of_the_isolating_designs(
    runs: dict[str, tuple[ycsb.YcsbResult, Path]],
) -> None:
    # Among the designs that isolate servers and whose applications enter the kernel to
    # call one. Under skybridge an application calls through the trampoline too (no
    # syscall), so its app->fs calls cost 368 cycles where underbridge's cost 953:
    # reported, not ranked. So under pku-shared, whose applications call the gate in
    # ring 3. Monolithic isolates nothing: the lower bound.
    throughput = {mode: result.sim_ops_per_sec for mode, (result, _) in runs.items()}
    unranked = ("monolithic", "skybridge", "pku-shared")
    ranked = {m: ops for m, ops in throughput.items() if m not in unranked}
    assert max(ranked, key=ranked.__getitem__) == "underbridge"
    assert throughput["monolithic"] > throughput["underbridge"]
    assert throughput["sel4"] > throughput["sel4-kpti"]


def test_same_seed_same_figures(runs: dict[str, tuple[ycsb.YcsbResult, Path]]) -> None:
    again = ycsb.run("underbridge", RECORDS, OPS, SEED)
    first = runs["underbridge"][0]
    assert (
        again.sim_cycles_per_op,
        again.breakdown,
        again.calls_per_op,
        again.load_sim_cycles,
    ) == (first.sim_cycles_per_op, first.breakdown, first.calls_per_op, first.load_sim_cycles)


def test_progress_counts_records_then_operations() -> None:
    seen: list[tuple[int, int]] = []
    ycsb.run("sel4", 10, 10, 1, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (20, 20)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_cli_json(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "ycsb",
            "--mode",
            "sel4",
            "--records",
            "10",
            "--ops",
            "10",
            "--seed",
            "5",
            "--json",
            "--db-out",
            str(db),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {
        "mode",
        "records",
        "ops",
        "seed",
        "sim_ops_per_sec",
        "sim_cycles_per_op",
        "ipc_calls_per_op",
        "wall_ops_per_sec",
        "breakdown",
    } <= set(report)
    assert (report["mode"], report["records"], report["ops"], report["seed"]) == ("sel4", 10, 10, 5)
    assert read_rows(db) == expected_rows(10, 10, 5)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ycsb.run("sel4", 0, 10)
    result = CliRunner().invoke(main, ["bench", "ycsb", "--records", "5000"])
    assert result.exit_code == 2 and "5000" in result.output
