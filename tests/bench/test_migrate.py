"""`underbridge bench migrate` at a small size: the cost of one migration each way, and
the placements on the phase-shifting workload (bench/migrate.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.bench import migrate_workload
from underbridge.bench.migrate_cost import measure
from underbridge.bench.migrate_workload import Workload
from underbridge.cli import main

SMALL = Workload(servers=24, phases=3, calls=1_000)


@pytest.fixture(scope="module")
def runs():
    return {p: migrate_workload.run(p, SMALL) for p in migrate_workload.PLACEMENTS}


def test_a_migration_is_made_of_more_events_with_more_pages_and_connections():
    (in_small, out_small), (in_big, _out_big) = measure(0, 1), measure(64, 8)
    assert (in_small.direction, out_small.direction) == ("in", "out")
    assert in_small.pages == out_small.pages and in_small.connections == 1
    assert in_big.pages == in_small.pages + 64 and in_big.connections == 8
    assert in_small.cycles > 0 and out_small.cycles > 0 and in_big.cycles > 0
    # the events grow with pages and connections (cycles need not: above 33 pages one
    # full TLB flush replaces the INVLPGs, kernel/migration.py)
    for event in ("key_retags", "pte_writes", "gate_words", "context_writes"):
        assert in_big.events[event] > in_small.events[event], event
    assert in_small.events["gates_generated"] == 1 and in_big.events["gates_generated"] == 8
    assert "gates_generated" not in out_small.events
    assert measure(0, 1)[0].cycles == in_small.cycles  # deterministic


def test_frequency_beats_static_and_every_placement_beats_all_user_space(runs):
    ops = {p: r.ops_per_sec for p, r in runs.items()}
    assert ops["frequency"] > ops["static"] > ops["sel4"]
    assert ops["oracle"] >= ops["frequency"]
    assert all(ops[p] > ops["sel4"] for p in migrate_workload.PLACEMENTS if p != "sel4")
    assert runs["static"].migrations == 0 and runs["sel4"].migrations == 0
    assert runs["frequency"].migrations > 0 and runs["frequency"].refused == 0
    # in the last phase the hot set (s16..s23) started in user space: frequency moved it in
    assert runs["frequency"].phase_ops_per_sec[2] > runs["static"].phase_ops_per_sec[2]


def test_every_migration_is_logged_with_its_reason_and_cost(runs):
    frequency = runs["frequency"]
    assert len(frequency.log) == frequency.migrations
    assert all("[frequency: " in line and " cycles (" in line for line in frequency.log)
    assert sum(1 for line in runs["oracle"].log if "[oracle: " in line) == runs["oracle"].migrations


def test_the_command_prints_the_json_fields_and_traces_each_migration(tmp_path):
    trace = tmp_path / "migrate.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "migrate",
            "--trace",
            str(trace),
            "--quick",
            "--phases",
            "2",
            "--calls",
            "200",
            "--policy",
            "lru",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data["migration_cycles"]) == {"in", "out"}
    assert data["migration_cycles"]["in"]["cycles"] > 0
    (lru,) = data["policies"]
    assert lru["policy"] == "lru" and lru["ops_per_sec"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    moves = [e for e in events if e.get("cat") == "lifecycle"]
    assert len(moves) == 2 + lru["migrations"]  # (a)'s one move each way, then (b)'s
