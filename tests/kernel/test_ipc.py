"""IPC end to end: the echo server and the pingpong client, real binaries, real kernel."""

from __future__ import annotations

import pytest

from underbridge.bench import ipc as ipc_bench
from underbridge.machine.costs import cycles

ROUND_TRIP_EVENTS = {  # kernel/ipc/sel4.py's docstring, as counts per round trip
    "sel4": {"syscall": 2, "swapgs": 4, "sysret": 2, "cr3_write": 2,
             "sel4_fastpath_call": 1, "sel4_fastpath_replyrecv": 1},
    "sel4-kpti": {"syscall": 2, "swapgs": 4, "sysret": 2, "cr3_write": 6,
                  "sel4_fastpath_call": 1, "sel4_fastpath_replyrecv": 1},
}


@pytest.fixture(scope="module", params=["sel4", "sel4-kpti"])
def result(request):
    return ipc_bench.run(request.param, rounds=200)


def test_every_path_completes_with_the_designs_event_sequence(result):
    assert [r.path for r in result.results] == list(ipc_bench.PATHS)
    for row in result.results:
        assert row.events_per_rtt == ROUND_TRIP_EVENTS[result.mode]


def test_round_trip_is_primitives_plus_a_few_user_instructions(result):
    for row in result.results:
        charged = sum(cycles(event) * n for event, n in row.events_per_rtt.items()
                      if event != "syscall")
        user = row.sim_cycles_per_rtt - charged - 2 * cycles("syscall")
        assert 0 < user < 100, (row, user)  # the client's loop and the server's handler


def test_results_are_identical_across_runs(result):
    again = ipc_bench.run(result.mode, rounds=200)
    assert [r.sim_cycles_per_rtt for r in again.results] == \
        [r.sim_cycles_per_rtt for r in result.results]


def test_kpti_adds_exactly_four_cr3_writes():
    plain, kpti = (ipc_bench.run(mode, rounds=50) for mode in ("sel4", "sel4-kpti"))
    for a, b in zip(plain.results, kpti.results, strict=True):
        assert b.sim_cycles_per_rtt - a.sim_cycles_per_rtt == 4 * cycles("cr3_write")
