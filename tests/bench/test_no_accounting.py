"""`--no-accounting` for bench ipc and bench ycsb, and `bench machine`'s floors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from underbridge.bench import machine as machine_bench
from underbridge.cli import main


def _json(*args: str) -> dict:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_bench_ipc_without_accounting_reports_wall_time_only():
    report = _json(
        "bench", "ipc", "--mode", "underbridge", "--rounds", "20", "--no-accounting", "--json"
    )
    assert [r["path"] for r in report["results"]] == ["app-server", "server-server"]
    for row in report["results"]:
        assert set(row) == {"path", "wall_us_per_rtt", "rounds"} and row["rounds"] == 20
        assert row["wall_us_per_rtt"] > 0


def test_bench_ycsb_without_accounting_gives_the_same_results_and_no_cycles():
    args = ("bench", "ycsb", "--mode", "sel4", "--records", "20", "--ops", "20", "--json")
    counted, uncounted = _json(*args), _json(*args, "--no-accounting")
    assert uncounted["summary"] == counted["summary"]  # the same database work
    assert uncounted["calls_per_op"] == counted["calls_per_op"]
    assert uncounted["fs_check"] == []
    assert not {"sim_ops_per_sec", "sim_cycles_per_op", "breakdown", "load_sim_cycles"} & set(
        uncounted
    )
    assert counted["sim_cycles_per_op"] > 0 and uncounted["wall_ops_per_sec"] > 0


def test_bench_machine_reports_each_path_against_its_floor():
    report = _json("bench", "machine", "--scale", "0.01", "--json")
    assert report["wrpkru_pair_floor_us"] > 0 and report["syscall_floor_us"] > 0
    rows = {(r["mode"], r["path"]): r for r in report["ipc"]}
    assert set(rows) == set(machine_bench.KERNEL_ENTRIES)
    for (mode, path), row in rows.items():
        entries = machine_bench.KERNEL_ENTRIES[mode, path]
        floor = report["syscall_floor_us"] * entries if entries else report["wrpkru_pair_floor_us"]
        assert row["kernel_entries"] == entries and row["floor_us"] == floor
        assert row["ratio"] == row["wall_us_per_rtt"] / floor > 0
