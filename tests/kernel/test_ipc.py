"""IPC end to end: the echo server and the pingpong client, real binaries, real kernel."""

from __future__ import annotations

import pytest

from underbridge.bench import ipc as ipc_bench
from underbridge.machine.costs import REFERENCE, cycles

ROUND_TRIP_EVENTS = {  # kernel/ipc/sel4.py's docstring, as counts per round trip
    "sel4": {
        "syscall": 2,
        "sysret": 2,
        "cr3_write": 2,
        "sel4_fastpath_call": 1,
        "sel4_fastpath_replyrecv": 1,
    },
    "sel4-kpti": {
        "syscall": 2,
        "sysret": 2,
        "cr3_write": 4,
        "sel4_fastpath_call_kpti": 1,
        "sel4_fastpath_replyrecv_kpti": 1,
    },
    "zircon": {  # kernel/ipc/zircon.py's docstring: channel_call; write, wait, read
        "syscall": 4,
        "swapgs": 8,
        "sysret": 4,
        "cr3_write": 2,
        "zircon_channel_write": 2,
        "zircon_channel_read": 2,
        "zircon_object_wait": 1,
        "zircon_thread_handoff": 2,
    },
    # kernel/ipc/skybridge.py: the trampoline's two vmfuncs, both paths, no kernel entry
    "skybridge": {"vmfunc": 2},
    # kernel/ipc/pku_shared.py: the gate called in ring 3, both paths, no kernel entry
    "pku-shared": {"wrpkru": 2},
}
PKU_USER_EVENTS = {  # kernel/ipc/pku_user.py: seL4's path into the server process; a gate
    "app-server": ROUND_TRIP_EVENTS["sel4"],
    "server-server": {"wrpkru": 2},
}


@pytest.fixture(
    scope="module",
    params=[
        "monolithic",
        "sel4",
        "sel4-kpti",
        "underbridge",
        "zircon",
        "skybridge",
        "pku-user",
        "pku-shared",
    ],
)
def result(request):
    return ipc_bench.run(request.param, rounds=200)


UNDERBRIDGE_EVENTS = {
    "app-server": {
        "syscall": 1,
        "swapgs": 2,
        "sel4_fastpath_call": 1,
        "cr3_write": 2,
        "wrpkru": 2,
        "sysret": 1,
    },
    "server-server": {"wrpkru": 2},  # machine code only: the kernel is never entered
}
MONOLITHIC_EVENTS = {  # kernel/ipc/monolithic.py's docstring: no CR3 write, no PKRU switch
    "app-server": {"syscall": 1, "swapgs": 2, "sel4_fastpath_call": 1, "sysret": 1},
    "server-server": {},  # a stub and the handler, machine code only
}
IN_KERNEL_EVENTS = {
    "underbridge": UNDERBRIDGE_EVENTS,
    "monolithic": MONOLITHIC_EVENTS,
    "pku-user": PKU_USER_EVENTS,
}


def test_every_path_completes_with_the_designs_event_sequence(result):
    assert [r.path for r in result.results] == list(ipc_bench.PATHS)
    for row in result.results:
        expected = (
            IN_KERNEL_EVENTS[result.mode][row.path]
            if result.mode in IN_KERNEL_EVENTS
            else ROUND_TRIP_EVENTS[result.mode]
        )
        assert row.events_per_rtt == expected


def test_round_trip_is_primitives_plus_a_few_user_instructions(result):
    if result.mode in IN_KERNEL_EVENTS or result.mode in ("skybridge", "pku-shared"):
        pytest.skip(f"the {result.mode} round trip is mostly gate/stub/trampoline and handler code")
    for row in result.results:
        charged = sum(cycles(event) * n for event, n in row.events_per_rtt.items())
        user = row.sim_cycles_per_rtt - charged
        assert 0 < user < 100, (row, user)  # the client's loop and the server's handler


def test_results_are_identical_across_runs(result):
    again = ipc_bench.run(result.mode, rounds=200)
    assert [r.sim_cycles_per_rtt for r in again.results] == [
        r.sim_cycles_per_rtt for r in result.results
    ]


def test_sel4_round_trip_is_in_the_published_range():
    """sel4bench: 772 cycles on Skylake; UnderBridge: optimized kernel IPC under 1,500."""
    for row in ipc_bench.run("sel4", rounds=50).results:
        assert 600 <= row.sim_cycles_per_rtt <= 1500


def test_kpti_adds_two_cr3_writes_and_the_longer_fastpath():
    plain, kpti = (ipc_bench.run(mode, rounds=50) for mode in ("sel4", "sel4-kpti"))
    extra = (
        2 * cycles("cr3_write")
        + cycles("sel4_fastpath_call_kpti")
        - cycles("sel4_fastpath_call")
        + cycles("sel4_fastpath_replyrecv_kpti")
        - cycles("sel4_fastpath_replyrecv")
    )
    for a, b in zip(plain.results, kpti.results, strict=True):
        assert b.sim_cycles_per_rtt - a.sim_cycles_per_rtt == extra


def test_underbridge_server_server_is_in_range_and_3x_below_sel4():
    """UnderBridge ATC'20: 109 cycles; the issue asks 80-160 and at least 3x below sel4."""
    sel4, bridge = (ipc_bench.run(mode, rounds=100) for mode in ("sel4", "underbridge"))
    rows = {r.path: r.sim_cycles_per_rtt for r in bridge.results}
    assert 80 <= rows["server-server"] <= 160
    assert rows["server-server"] * 3 <= min(r.sim_cycles_per_rtt for r in sel4.results)
    assert rows["app-server"] < min(r.sim_cycles_per_rtt for r in sel4.results)


def test_zircon_round_trip_is_its_operations_and_within_2x_of_the_published_one():
    """The sum of Zircon's own per-operation figures, compared with (never charged as)
    its published RoundTrip_ChannelCall_MultiProcess: within the issue's factor 2."""
    published = REFERENCE["zircon_channel_call_roundtrip"].cycles
    operations = 4 * (82 + 2 * 26 + 75) + 2 * 1325 + 2 * 1301 + 864 + 2 * 1986 + 2 * 186
    guest_instructions = 57  # the client's and the server's own code per round trip
    for row in ipc_bench.run("zircon", rounds=50).results:
        assert row.sim_cycles_per_rtt == pytest.approx(operations + guest_instructions, abs=1)
        assert 1 < published / row.sim_cycles_per_rtt < 2


def test_skybridge_is_near_400_and_2_to_4x_underbridge():
    """Issue 13: SkyBridge about 400 cycles (within 35%), 2x-4x UnderBridge's 159."""
    sky, bridge = (ipc_bench.run(mode, rounds=100) for mode in ("skybridge", "underbridge"))
    ub = {r.path: r.sim_cycles_per_rtt for r in bridge.results}["server-server"]
    for row in sky.results:
        assert abs(row.sim_cycles_per_rtt - 400) <= 0.35 * 400
        assert 2 <= row.sim_cycles_per_rtt / ub <= 4
