"""`bench crash`: YCSB-A while the storage servers are killed at seeded instants, under
every IPC design; the checks must find nothing lost, and must be able to find it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.bench.crash import compare, expected_table, run_crash
from underbridge.bench.ycsb_native import expected_rows
from underbridge.bench.ycsb_workload import Update, YcsbGenerator
from underbridge.cli import main
from underbridge.kernel.ipc.registry import DESIGNS

RECORDS, OPS = 20, 60
CI_OPS = 150  # room for 20 kills, each followed by a failed operation or more


def updates(records: int, ops: int, seed: int) -> list[tuple[int, Update]]:
    generator = YcsbGenerator(seed)
    list(generator.load_records(records))
    return [
        (index, op)
        for index, op in enumerate(generator.operations(records, ops, "a"))
        if isinstance(op, Update)
    ]


def test_the_expected_table_leaves_out_exactly_the_failed_updates():
    ops = updates(RECORDS, OPS, 1)
    assert expected_table(RECORDS, OPS, 1, set())[0] == expected_rows(RECORDS, OPS, 1)
    last_index, last = ops[-1]
    full, full_writer = expected_table(RECORDS, OPS, 1, set())
    table, writer = expected_table(RECORDS, OPS, 1, {last_index})
    assert full_writer[(last.key, last.field)] == last_index
    assert writer.get((last.key, last.field)) != last_index
    assert table[last.key][last.field] != last.value == full[last.key][last.field]
    assert {k: v for k, v in table.items() if k != last.key} == {
        k: v for k, v in full.items() if k != last.key
    }


def test_compare_finds_a_lost_update_and_a_failed_one_present():
    ops = updates(RECORDS, OPS, 1)
    index, op = ops[-1]  # the last update: nothing overwrites it
    expected, writer = expected_table(RECORDS, OPS, 1, set())
    assert compare(expected, writer, expected, []) == (0, 0)
    lost = dict(expected)
    fields = list(lost[op.key])
    fields[op.field] = "x" * 100
    lost[op.key] = tuple(fields)
    assert compare(expected, writer, lost, []) == (1, 0)
    without, writer_without = expected_table(RECORDS, OPS, 1, {index})
    # the update "failed", but the database holds its value: present_failed
    assert compare(without, writer_without, expected, [(op.key, op.field, op.value)])[1] == 1
    assert compare(expected, writer, None, []) == (len(writer), 0)  # no database at all


@pytest.mark.parametrize("mode", DESIGNS)
def test_twenty_injections_lose_no_committed_transaction(mode):
    """CI's run: 20 kills per design, the fs server and the ramdisk in turn."""
    result = run_crash(mode, 20, seed=1, target="both", records=RECORDS, ops=CI_OPS)
    assert result.injections == 20
    assert result.restarts >= 20  # a kill can end a second server (see restart_causes)
    assert result.lost_committed == 0 and result.present_failed == 0
    assert result.table_matches
    assert result.integrity == "ok" and result.fs_check == []
    assert result.committed_updates + result.failed_updates == len(updates(RECORDS, CI_OPS, 1))
    assert all(r.cycles > 0 for r in result.recoveries)


def test_the_same_seed_gives_the_same_run():
    one = run_crash("sel4", 5, seed=3, target="fs", records=RECORDS, ops=OPS)
    two = run_crash("sel4", 5, seed=3, target="fs", records=RECORDS, ops=OPS)
    assert [(r.died_at, r.cycles) for r in one.recoveries] == [
        (r.died_at, r.cycles) for r in two.recoveries
    ]
    assert one.committed_ops == two.committed_ops and one.failed_updates == two.failed_updates


def test_the_command_prints_the_json_fields_and_traces_each_restart(tmp_path):
    trace = tmp_path / "crash.json"
    args = ["--injections", "3", "--records", "10", "--ops", "30", "--json", "--trace", trace]
    out = CliRunner().invoke(main, ["bench", "crash", *map(str, args)])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    for name in ("injections", "restarts", "committed_ops", "lost_committed", "integrity"):
        assert name in data
    assert data["injections"] == 3 and data["lost_committed"] == 0
    assert data["integrity"] == "ok" and data["fs_check"] == []
    events = json.loads(trace.read_text())["traceEvents"]
    restarts = [e for e in events if e.get("cat") == "lifecycle"]
    assert len(restarts) == data["restarts"] and all("restart" in e["name"] for e in restarts)
