"""`underbridge reproduce`: every IPC design, the published figures, the files it writes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from matplotlib import image
from rich.console import Console

from underbridge.bench import ipc as ipc_bench
from underbridge.bench import reproduce, reproduce_ycsb, ycsb
from underbridge.cli import main
from underbridge.kernel.ipc import registry as designs

ROUNDS = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    steps: list[tuple[str, int]] = []
    result = reproduce.run(rounds=ROUNDS, out=out, progress=lambda mode, n: steps.append((mode, n)))
    return result, json.loads((out / reproduce.JSON_NAME).read_text()), steps


def text(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def cycles(report: dict, mode: str, path: str) -> float:
    return next(
        r["sim_cycles_per_rtt"]
        for r in report["modes"][mode]["bench"]["results"]
        if r["path"] == path
    )


def test_json_has_every_design_with_both_paths(run):
    _, report, _ = run
    assert report["rounds"] == ROUNDS
    assert list(report["modes"]) == list(designs.DESIGNS)
    for mode, entry in report["modes"].items():
        assert entry["bench"]["mode"] == mode and entry["wall_seconds"] > 0
        assert [r["path"] for r in entry["bench"]["results"]] == list(ipc_bench.PATHS)
        assert all(r["sim_cycles_per_rtt"] > 0 for r in entry["bench"]["results"])
    assert [f["key"] for f in report["paper"]] == [f.key for f in reproduce.PAPER]


def test_progress_covers_every_round_trip(run):
    _, _, steps = run
    assert list(dict.fromkeys(mode for mode, _ in steps)) == list(designs.DESIGNS)
    assert sum(n for _, n in steps) == reproduce.total_round_trips(ROUNDS)


def test_png_is_a_real_chart(run):
    result, _, _ = run
    data = result.plot_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    pixels = image.imread(result.plot_path)
    height, width, channels = pixels.shape
    assert height >= 500 and width >= 800 and channels in (3, 4)


def test_every_measured_path_and_every_paper_figure_has_a_row(run):
    result, report, _ = run
    measured = {
        (row["mode"], row["path"])
        for row in report["comparison"]
        if row["sim_cycles_per_rtt"] is not None
    }
    assert measured == {(m, p) for m in designs.DESIGNS for p in ipc_bench.PATHS}
    shown = {key for row in report["comparison"] for key in row["paper"]}
    assert shown == {f.key for f in reproduce.PAPER}
    table = text(reproduce.comparison_table(result))
    for figure in reproduce.PAPER:
        assert f"{figure.shown()} [{reproduce.PAPER.index(figure) + 1}]" in table
    assert "underbridge" in table and "skybridge" in table  # built or not, they are listed
    sources = text(reproduce.paper_table())
    assert all(f.what in sources for f in reproduce.PAPER)


def test_paper_figures_reuse_the_cost_table():
    from underbridge.machine.costs import COSTS, REFERENCE

    by_key = {f.key: f for f in reproduce.PAPER}
    assert by_key["sel4_call_reply_skylake"].cycles == REFERENCE["sel4_call_reply_skylake"].cycles
    assert by_key["function_call"].cycles == COSTS["function_call"].cycles
    assert by_key["underbridge_ipc_roundtrip"].path == "server-server"


def test_ratios_are_the_measured_numbers_divided(run):
    result, report, _ = run
    others = [m for m in designs.DESIGNS if m != "sel4"]
    assert [(r["mode"], r["versus"]) for r in report["ratios"]][: len(others)] == [
        (m, "sel4") for m in others
    ]
    for ratio in report["ratios"]:
        assert ratio["ours"] == pytest.approx(
            cycles(report, ratio["mode"], "server-server")
            / cycles(report, ratio["versus"], "server-server")
        )
    shown = text(reproduce.ratio_table(result))
    assert shown.count(" / sel4") == len(others)
    assert shown.count(" / underbridge") == len(designs.DESIGNS) - 1


def test_new_designs_need_no_change(tmp_path, monkeypatch):
    fake = {
        "monolithic": 60.0,
        "sel4": 1_207.0,
        "underbridge": 150.0,
        "skybridge": 450.0,
        "zircon": 7_400.0,
    }
    monkeypatch.setattr(designs, "DESIGNS", tuple(fake))
    monkeypatch.setattr(
        ipc_bench,
        "run",
        lambda mode, rounds, progress=None: ipc_bench.IpcBenchResult(
            mode,
            rounds,
            tuple(ipc_bench.PathResult(path, fake[mode], 1.0, rounds) for path in ipc_bench.PATHS),
        ),
    )
    result = reproduce.run(rounds=ROUNDS, out=tmp_path)
    assert list(result.results) == list(fake)
    assert all(row.sim_cycles is not None for row in result.rows if row.mode)
    under = next(r for r in result.rows if (r.mode, r.path) == ("underbridge", "server-server"))
    assert [f.key for f in under.paper] == ["underbridge_ipc_roundtrip"]
    ratios = {(r.mode, r.versus): r for r in result.ratios}
    assert ratios["skybridge", "underbridge"].ours == pytest.approx(450 / 150)
    assert ratios["skybridge", "underbridge"].paper == pytest.approx(400 / 109)
    assert ratios["skybridge", "sel4"].paper == pytest.approx(400 / 772)
    assert result.plot_path.read_bytes().startswith(PNG_MAGIC)


def test_cli_quick_writes_and_shows_every_table(tmp_path):
    """`make run`'s command, run once: its tables, and the files they come from."""
    shown = CliRunner().invoke(
        main, ["reproduce", "--quick", "--out", str(tmp_path)], catch_exceptions=False
    )
    assert shown.exit_code == 0
    assert "published figures" in shown.stdout and "paper cycles" in shown.stdout
    assert "SQLite under YCSB-A" in shown.stdout and "speedup over" in shown.stdout
    assert "where an operation's simulated cycles go" in shown.stdout
    assert "…" not in shown.stdout  # every figure fits in 80 columns, none cut short
    assert json.loads((tmp_path / reproduce.JSON_NAME).read_text())["rounds"] == (
        reproduce.QUICK_ROUNDS
    )
    assert json.loads((tmp_path / reproduce_ycsb.JSON_NAME).read_text())["records"] == (
        reproduce_ycsb.QUICK_RECORDS
    )
    for plot in (reproduce.PLOT_NAME, reproduce_ycsb.PLOT_NAME):
        assert (tmp_path / plot).read_bytes().startswith(PNG_MAGIC)


def test_cli_json_prints_what_it_writes(tmp_path, monkeypatch):
    """--json: the same reports on stdout as in the files (at a smaller size: the
    quick run itself is the test above)."""
    monkeypatch.setattr(reproduce, "QUICK_ROUNDS", 3)
    monkeypatch.setattr(reproduce_ycsb, "QUICK_RECORDS", 5)
    monkeypatch.setattr(reproduce_ycsb, "QUICK_OPS", 5)
    result = CliRunner().invoke(
        main, ["reproduce", "--quick", "--json", "--out", str(tmp_path)], catch_exceptions=False
    )
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ipc"]["rounds"] == 3 and report["ycsb"]["records"] == 5
    assert report["ipc"] == json.loads((tmp_path / reproduce.JSON_NAME).read_text())
    assert report["ycsb"] == json.loads((tmp_path / reproduce_ycsb.JSON_NAME).read_text())


def test_ycsb_reproduction_compares_every_mode_with_sel4(tmp_path):
    result = reproduce_ycsb.run(10, 10, tmp_path, seed=2)
    assert set(result.results) == set(ycsb.MODES)
    assert result.speedup("sel4") == 1.0
    for mode, bench in result.results.items():
        assert result.speedup(mode) == pytest.approx(
            bench.sim_ops_per_sec / result.results["sel4"].sim_ops_per_sec
        )
    saved = json.loads(result.json_path.read_text())
    assert saved["modes"]["underbridge"]["speedup_over_baseline"] == result.speedup("underbridge")
    assert result.plot_path.read_bytes().startswith(PNG_MAGIC)
