"""Regression: a guest that spins forever hung `underbridge run` (no limit at all).

`run` now stops the guest once the machine's clock passes `--budget` (simulated cycles,
or instructions with --no-accounting), checked between kernel events, whose slices
the scheduler's quantum bounds; it reports the spent budget and exits non-zero.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.cli import main
from underbridge.cli.guests import EXIT_BUDGET
from underbridge.kernel.sched import DEFAULT_QUANTUM

BUDGET = 300_000
SPIN = '#include "ub.h"\nint main(void) { ub_printf("spinning\\n"); for (;;) {} }\n'


@pytest.fixture(scope="module")
def spin_c(tmp_path_factory):
    source = tmp_path_factory.mktemp("spin") / "spin.c"
    source.write_text(SPIN)
    return source


def run(*args: str):
    return CliRunner().invoke(main, ["run", *args], catch_exceptions=False)


def test_a_spinning_guest_is_stopped_by_its_cycle_budget(spin_c):
    result = run("--c", str(spin_c), "--budget", str(BUDGET), "--json")
    assert result.exit_code == EXIT_BUDGET
    report = json.loads(result.output)
    assert report["status"] == "budget" and report["budget"] == BUDGET
    assert report["output"] == "spinning\n" and report["exit_status"] is None
    assert BUDGET <= report["sim_cycles"] < BUDGET + DEFAULT_QUANTUM  # stopped at the next check


def test_the_budget_is_reported_in_one_line(spin_c):
    result = run("--c", str(spin_c), "--budget", str(BUDGET))
    assert result.exit_code == EXIT_BUDGET
    assert f"stopped: budget of {BUDGET:,} cycles spent" in result.output
    assert "spin: budget," in result.output


def test_without_accounting_the_budget_counts_instructions(spin_c):
    result = run("--c", str(spin_c), "--budget", str(BUDGET), "--no-accounting")
    assert result.exit_code == EXIT_BUDGET
    assert f"stopped: budget of {BUDGET:,} instructions spent" in result.output


def test_a_program_that_ends_within_its_budget_is_not_stopped():
    result = run("hello", "--budget", "100000", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["status"] == "exited"
