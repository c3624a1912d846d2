"""Traces (kernel/trace/): valid Chrome trace JSON, consistent with the run's own counters,
and invisible to every simulated figure. Real guests on the emulated CPU throughout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from underbridge.bench import deprivilege, round_trip_trace
from underbridge.bench import ipc as ipc_bench
from underbridge.cli import main
from underbridge.kernel.trace.chrome import LIMIT_REACHED
from underbridge.kernel.trace.session import TraceSession, active, recording

# -- the format, from the Trace Event Format document ------------------------------------

PHASES = {"X", "i", "s", "f", "M"}  # the phases this recorder writes
METADATA = {
    "process_name": "name",
    "process_labels": "labels",
    "process_sort_index": "sort_index",
    "thread_name": "name",
    "thread_sort_index": "sort_index",
}


def check_chrome_trace(doc: dict) -> None:
    """Assert `doc` is a valid JSON-object-format trace, as Perfetto and chrome://tracing
    read it: the fields each phase needs, flows paired, slices nested on each track,
    every track named."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    named: set[tuple[str, int]] = set()
    flows: dict[int, list[dict]] = {}
    slices: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for event in doc["traceEvents"]:
        assert event["ph"] in PHASES, event
        assert isinstance(event["name"], str) and event["name"], event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        if event["ph"] == "M":
            assert isinstance(event["args"][METADATA[event["name"]]], str | int), event
            named.add(("pid" if event["name"].startswith("process") else "tid", event["pid"]
                       if event["name"].startswith("process") else event["tid"]))  # fmt: skip
            continue
        assert isinstance(event["ts"], int | float) and event["ts"] >= 0, event
        assert isinstance(event.get("args", {}), dict), event
        if event["ph"] == "X":
            assert isinstance(event["dur"], int | float) and event["dur"] >= 0, event
            start = round(event["ts"] * 2000)
            slices.setdefault((event["pid"], event["tid"]), []).append(
                (start, round((event["ts"] + event["dur"]) * 2000))
            )
        elif event["ph"] == "i":
            assert event["s"] in ("t", "p", "g"), event
        else:
            assert isinstance(event["id"], int) and event["cat"], event
            assert event["ph"] == "s" or event["bp"] == "e", event
            flows.setdefault(event["id"], []).append(event)
        if event["ph"] != "i" or event["s"] != "g":
            assert ("pid", event["pid"]) in named and ("tid", event["tid"]) in named, event
    for pair in flows.values():
        assert [e["ph"] for e in pair] == ["s", "f"] and pair[0]["ts"] <= pair[1]["ts"], pair
    for track, spans in slices.items():
        _assert_nested(track, spans)


def _assert_nested(track: tuple[int, int], spans: list[tuple[int, int]]) -> None:
    """Slices on one track must nest (Perfetto drops the ones that straddle)."""
    open_ends: list[int] = []
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        while open_ends and open_ends[-1] <= start:
            open_ends.pop()
        assert not open_ends or end <= open_ends[-1], (track, start, end, open_ends)
        open_ends.append(end)


def recorded_events(doc: dict, machine: int) -> Counter[str]:
    """The costed events machine #`machine`'s trace shows, counted from the JSON alone."""
    counts: Counter[str] = Counter()
    for event in doc["traceEvents"]:
        if event["ph"] == "M" or event["pid"] // 100_000 != machine:
            continue
        cat = event.get("cat")
        if cat in ("charge", "charge,cr3"):
            counts.update(event["args"]["events"])
        elif cat == "insn":
            counts[event["name"]] += 1
        elif cat == "pkru":
            counts["wrpkru"] += 1
        elif cat == "syscall":
            counts["syscall"] += 1
    return counts


def traced(run, tmp_path: Path, limit: int | None = None) -> tuple[dict, TraceSession]:
    path = tmp_path / "trace.json"
    with recording(path, limit) as session:
        run()
    text = path.read_text()
    doc = json.loads(text)
    assert json.loads(json.dumps(doc)) == doc  # a round trip through the parser
    return doc, session


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sel4", "underbridge", "zircon", "skybridge", "pku-shared"])
def test_ipc_trace_is_valid_and_every_costed_event_of_the_tally_is_in_it(mode, tmp_path):
    doc, session = traced(lambda: ipc_bench.run(mode, rounds=20), tmp_path)
    check_chrome_trace(doc)
    assert [t.number for t in session.tracers] == [1, 2]  # app-server, server-server
    for tracer in session.tracers:
        tally = tracer.machine.tally()
        assert recorded_events(doc, tracer.number) == tally.events
        assert (
            doc["otherData"]["recorded"][f"#{tracer.number}"]["syscall"] == tally.events["syscall"]
        )


def test_underbridge_gate_calls_are_half_the_pkru_switches_with_flows_both_ways(tmp_path):
    doc, session = traced(lambda: ipc_bench.run("underbridge", rounds=20), tmp_path)
    events = [e for e in doc["traceEvents"] if e["ph"] != "M"]
    for tracer in session.tracers:
        mine = [e for e in events if e["pid"] // 100_000 == tracer.number]
        gates = [e for e in mine if e.get("cat") == "gate" and e["name"] == "gate call -> echo"]
        handlers = [e for e in mine if e.get("cat") == "gate" and e["name"].startswith("echo ")]
        assert 2 * len(gates) == tracer.machine.tally().events["wrpkru"] == 2 * len(handlers)
        flows = Counter(e["name"] for e in mine if e["ph"] == "s")
        assert flows["call echo"] == flows["return from echo"] == len(gates)


def test_a_trace_changes_no_simulated_figure(tmp_path):
    plain = ipc_bench.run("underbridge", rounds=20)
    to_file: list[ipc_bench.IpcBenchResult] = []
    traced(lambda: to_file.append(ipc_bench.run("underbridge", rounds=20)), tmp_path)
    session = TraceSession()
    with active(session):
        traced_result = ipc_bench.run("underbridge", rounds=20)
    for figures in (to_file[0], traced_result):
        assert [(r.sim_cycles_per_rtt, r.events_per_rtt) for r in figures.results] == [
            (r.sim_cycles_per_rtt, r.events_per_rtt) for r in plain.results
        ]


def test_run_reports_the_same_tally_with_and_without_a_trace(tmp_path):
    runner = CliRunner()
    plain = json.loads(runner.invoke(main, ["run", "hello", "--json"]).output)
    trace = tmp_path / "hello.json"
    result = runner.invoke(main, ["run", "hello", "--json", "--trace", str(trace)])
    with_trace = json.loads(result.stdout)  # the "wrote trace" note goes to stderr
    assert "wrote trace" in result.stderr
    for key in ("sim_cycles", "guest_instructions", "events", "exit_status"):
        assert with_trace[key] == plain[key]
    doc = json.loads(trace.read_text())
    check_chrome_trace(doc)
    assert recorded_events(doc, 1) == Counter(plain["events"])
    names = [e["name"] for e in doc["traceEvents"] if e.get("cat") == "syscall"]
    assert names == ["syscall WRITE", "syscall EXIT"]


def test_vm_exits_are_in_the_trace_with_their_instruction(tmp_path):
    doc, session = traced(lambda: deprivilege.run(rounds=5), tmp_path)
    check_chrome_trace(doc)
    trapped = session.tracers[0]  # the trapped way runs first (#1), the rewritten one #2
    exits = [
        e for e in doc["traceEvents"] if e.get("cat") == "vm_exit" and e["pid"] // 100_000 == 1
    ]
    tally = trapped.machine.tally()
    assert len(exits) == tally.events["vm_exit"] > 5  # every port write, and the markers'
    assert {e["name"] for e in exits} >= {"VM exit: out dx, al"}
    assert recorded_events(doc, 1) == tally.events


def test_a_fault_is_decoded_in_the_trace(tmp_path):
    source = tmp_path / "crash.c"
    source.write_text("int main(void){ return *(volatile int *)0x10; }\n")
    trace = tmp_path / "crash.json"
    CliRunner().invoke(main, ["run", "--c", str(source), "--json", "--trace", str(trace)])
    doc = json.loads(trace.read_text())
    check_chrome_trace(doc)
    (fault,) = [e for e in doc["traceEvents"] if e.get("cat") == "fault"]
    assert fault["name"] == "fault: #PF" and "read of 0x10" in fault["args"]["fault"]


def test_at_the_limit_recording_stops_and_says_so(tmp_path):
    results = []
    doc, session = traced(
        lambda: results.append(ipc_bench.run("sel4", rounds=20)), tmp_path, limit=50
    )
    check_chrome_trace(doc)
    events = [e for e in doc["traceEvents"] if e["ph"] != "M"]
    assert len(events) == 50 and events[-1]["name"] == LIMIT_REACHED
    assert events[-1]["s"] == "g" and events[-1]["args"] == {"limit": 50}
    assert doc["otherData"]["events_dropped"] == session.trace.dropped > 0
    # the figures are those of an untraced run all the same
    plain = ipc_bench.run("sel4", rounds=20)
    assert [r.sim_cycles_per_rtt for r in results[0].results] == [
        r.sim_cycles_per_rtt for r in plain.results
    ]


def test_trace_off_leaves_no_hook_and_trace_end_removes_its_own(tmp_path):
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.cpu import Machine

    machine = Machine()
    assert Kernel(machine).tracer is None and "charge" not in vars(machine)
    session = TraceSession()
    with active(session):
        traced_machine = Machine()
        kernel = Kernel(traced_machine)
        assert kernel.tracer is session.tracers[0] and "charge_all" in vars(traced_machine)
    assert not {"charge", "charge_all", "charge_in"} & set(vars(traced_machine))


def test_one_round_trip_per_design_as_reproduce_writes_it(tmp_path):
    path = round_trip_trace.write("sel4", tmp_path)
    doc = json.loads(path.read_text())
    check_chrome_trace(doc)
    trace = round_trip_trace.record("sel4")
    assert round_trip_trace.steps(trace, 1) == [
        "user space, ring 3",
        "syscall IPC_CALL",
        "sel4_fastpath_call + sysret",
        "user space, ring 3",
        "address-space switch to echo: cr3_write",
        "syscall IPC_REPLY_WAIT",
        "sel4_fastpath_replyrecv + sysret",
        "user space, ring 3",
        "address-space switch to pingpong: cr3_write",
    ]
    flows = [e["name"] for e in doc["traceEvents"] if e["ph"] == "s" and e["pid"] < 200_000]
    assert flows == ["IPC_CALL from pingpong/2", "IPC_REPLY_WAIT from echo/1"]
    underbridge = round_trip_trace.record("underbridge")
    assert [s.replace("key 2", "key K") for s in round_trip_trace.steps(underbridge, 2)] == [
        "kernel space, domain key K, ring 0",
        "gate call -> echo",
        "echo handler for pingpong/2",
        "PKRU switch pingpong -> echo",
        "PKRU switch echo -> pingpong",
    ]


def test_the_lifecycle_hook_marks_a_process(tmp_path):
    """The one call a migration (kernel/migration.py) and a restarter make."""
    from underbridge.guestbuild.toolchain import build_program
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.cpu import Machine

    def run() -> None:
        kernel = Kernel(Machine())
        group = kernel.spawn(build_program("hello", base=0x0200_0000), ["hello"])
        assert kernel.tracer is not None
        kernel.tracer.lifecycle("migrate", group, to="kernel space")
        kernel.run()

    doc, _session = traced(run, tmp_path)
    check_chrome_trace(doc)
    (mark,) = [e for e in doc["traceEvents"] if e.get("cat") == "lifecycle"]
    assert mark["name"] == "migrate hello" and mark["s"] == "p" and mark["ts"] == 0
    assert mark["args"] == {"to": "kernel space"}
    assert doc["otherData"]["recorded"]["#1"]["migrate"] == 1


def test_trace_with_no_accounting_is_a_one_line_user_error(tmp_path):
    result = CliRunner().invoke(
        main,
        ["bench", "ipc", "--rounds", "3", "--no-accounting", "--trace", str(tmp_path / "t")],
    )
    assert result.exit_code == 2 and "--no-accounting" in result.output
