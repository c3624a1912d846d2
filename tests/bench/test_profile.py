"""The simulated-cycle profiler on real runs: the IPC benchmark, YCSB, one program.

Every profile is checked for exactness (its total is the machine's simulated cycles,
nothing unattributed, its folded stacks sum to it, self <= total per function) and for
leaving the run alone (the same tally with the profiler on as off).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from underbridge.bench import ipc, ycsb
from underbridge.bench.profile_report import KERNEL, Profile
from underbridge.bench.profile_targets import profile_program
from underbridge.bench.profiler import Profiler
from underbridge.cli import main
from underbridge.elf.symbols import function_symbols
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program, symbol
from underbridge.kernel.kernel import Kernel
from underbridge.machine.accounting import Tally
from underbridge.machine.cpu import Machine

ROUNDS = 20
CALLSHAPES = Path(__file__).parents[1] / "guests" / "callshapes.c"
RECORDS, OPS = 20, 20


class _Capture:
    """An `observe` hook: keeps the kernel, and profiles it if asked to."""

    def __init__(self, *, profile: bool) -> None:
        self.profile = profile
        self.kernel: Kernel | None = None
        self.profiler: Profiler | None = None

    def __call__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        if self.profile:
            self.profiler = Profiler(kernel).attach()

    def tally(self) -> Tally:
        assert self.kernel is not None
        return self.kernel.machine.tally()

    def finish(self) -> Profile:
        assert self.profiler is not None
        return self.profiler.finish("test")


def _check_exact(profile: Profile, run_cycles: int) -> None:
    assert profile.total == run_cycles > 0
    assert profile.unattributed == 0
    lines = profile.folded_lines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == run_cycles
    assert sum(c.self_cycles for c in profile.functions.values()) == run_cycles
    assert sum(profile.programs().values()) == run_cycles
    for counted in profile.functions.values():
        assert 0 <= counted.self_cycles <= counted.total_cycles <= run_cycles


def _ipc_run(mode: str, path: str, *, profile: bool) -> tuple[ipc.PathResult, _Capture]:
    capture = _Capture(profile=profile)
    return ipc.run_path(mode, path, ROUNDS, observe=capture), capture


@pytest.mark.parametrize(
    ("mode", "path"),
    [("sel4", "app-server"), ("underbridge", "app-server"), ("underbridge", "server-server")],
)
def test_an_ipc_profile_is_exact_and_changes_no_figure(mode: str, path: str) -> None:
    plain, off = _ipc_run(mode, path, profile=False)
    profiled, on = _ipc_run(mode, path, profile=True)
    assert off.tally() == on.tally()  # cycles, instructions, events, categories
    assert profiled.sim_cycles_per_rtt == plain.sim_cycles_per_rtt
    assert profiled.events_per_rtt == plain.events_per_rtt
    _check_exact(on.finish(), on.tally().cycles)


def test_sel4_round_trips_name_the_echo_handler_and_the_fastpath() -> None:
    _, capture = _ipc_run("sel4", "app-server", profile=True)
    profile = capture.finish()
    assert profile.function("echo", "handle").self_cycles > 0
    # The server's handler runs in its own thread, called from its serve loop; the
    # kernel's Call fastpath is charged under the client's frame that made the call.
    stacks = profile.stacks
    assert any(p.startswith("echo;") and p.endswith(";ub_ipc_serve;handle") for p in stacks)
    calls = [p for p in stacks if p.startswith("pingpong;") and p.endswith("sel4_fastpath_call")]
    assert calls and all(";[kernel] ipc;" in p for p in calls)


def test_underbridge_app_calls_run_the_in_kernel_handler_under_the_callers_stack() -> None:
    _, capture = _ipc_run("underbridge", "app-server", profile=True)
    profile = capture.finish()
    handler = [p for p in profile.stacks if p.endswith(";[gate];echo:handle")]
    assert len(handler) == 1
    assert handler[0].startswith("pingpong;_start;main;[kernel] ipc;")
    assert profile.function("echo", "handle").self_cycles > 0
    assert profile.function(KERNEL, "[gate]").self_cycles > 0


def test_underbridge_server_server_calls_never_enter_the_kernel() -> None:
    _, capture = _ipc_run("underbridge", "server-server", profile=True)
    profile = capture.finish()
    assert "pingpong;_start;main;[gate];echo:handle" in profile.stacks
    assert not any("[gate]" in p and "[kernel] ipc" in p for p in profile.stacks)


@pytest.fixture(scope="module")
def ycsb_runs() -> tuple[ycsb.YcsbResult, _Capture, ycsb.YcsbResult, _Capture]:
    off, on = _Capture(profile=False), _Capture(profile=True)
    plain = ycsb.run("underbridge", RECORDS, OPS, observe=off)
    profiled = ycsb.run("underbridge", RECORDS, OPS, observe=on)
    return plain, off, profiled, on


def test_a_ycsb_profile_is_exact_and_changes_no_figure(ycsb_runs) -> None:
    plain, off, profiled, on = ycsb_runs
    assert off.tally() == on.tally()
    assert profiled.sim_cycles_per_op == plain.sim_cycles_per_op
    assert profiled.breakdown == plain.breakdown
    _check_exact(on.finish(), on.tally().cycles)


def test_the_ycsb_profile_names_sqlite_fs_and_ramdisk_functions(ycsb_runs) -> None:
    *_, on = ycsb_runs
    profile = on.finish()
    ycsb_top = [name for name, _ in profile.top("ycsb", 15)]
    assert "sqlite3VdbeExec" in ycsb_top
    fs, ramdisk = profile.function("fs", "fs_handle"), profile.function("ramdisk", "handle")
    assert fs.self_cycles > 0 and ramdisk.self_cycles > 0
    # fs's handler includes its calls to the RAM disk; the top of each is known code.
    assert fs.total_cycles > ramdisk.total_cycles > 0
    assert profile.top("ramdisk", 1)[0][0] in ("memcpy", "handle")
    assert profile.function("ycsb", "sqlite3_step").total_cycles > fs.total_cycles
    assert not any("[no symbol]" in p or "[code at" in p for p in profile.stacks)


def test_profile_run_of_hello_and_its_files(tmp_path: Path) -> None:
    folded, svg, scope = (tmp_path / f"hello.{ext}" for ext in ("folded", "svg", "json"))
    files = ["--folded", str(folded), "--svg", str(svg), "--speedscope", str(scope)]
    result = CliRunner().invoke(main, ["profile", "run", "hello", *files, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unattributed_cycles"] == 0
    assert "main" in [row["function"] for row in report["programs"]["hello"]["top"]]
    lines = folded.read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == report["total_cycles"]
    assert all(line.startswith(("hello;", "[kernel]")) for line in lines)
    titles = [
        e.text or "" for e in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}title")
    ]
    assert any(t.startswith("main (") and "cycles" in t for t in titles)
    speedscope = json.loads(scope.read_text())
    names = [frame["name"] for frame in speedscope["shared"]["frames"]]
    (sampled,) = speedscope["profiles"]
    assert sampled["type"] == "sampled" and sampled["endValue"] == report["total_cycles"]
    assert sum(sampled["weights"]) == report["total_cycles"]
    paths = {";".join(names[i] for i in sample) for sample in sampled["samples"]}
    assert paths == {line.rsplit(" ", 1)[0] for line in lines}


def test_profile_run_total_is_the_machines(hello_elf: Path) -> None:
    target = profile_program(hello_elf, ["hello"], "hello", budget=0)
    _check_exact(target.profile, target.run_cycles)
    assert "exited (status 0)" in target.summary


def test_call_stacks_follow_recursion_tail_calls_and_pointers() -> None:
    elf = build_program(CALLSHAPES, base=0x40_0000)
    target = profile_program(elf, ["callshapes"], "callshapes", budget=0)
    profile, stacks = target.profile, target.profile.stacks
    _check_exact(profile, target.run_cycles)
    main = "callshapes;_start;main;"
    # recurse(5) is six frames; recurse(0) ends in `jmp leaf`, a tail call, whose
    # callee takes its frame (the documented limit).
    assert main + ";".join(["recurse"] * 6) in stacks
    assert main + ";".join(["recurse"] * 5 + ["leaf"]) in stacks
    recurse = profile.function("callshapes", "recurse")  # counted once per path
    assert recurse.total_cycles == sum(c for p, c in stacks.items() if ";recurse" in p)
    # tail_caller ends in `jmp tail_target`: tail_target shows as main's callee.
    assert main + "tail_caller" in stacks and main + "tail_target;leaf" in stacks
    assert not any("tail_caller;" in p for p in stacks)
    assert main + "by_pointer;leaf" in stacks  # an indirect call
    leaf = profile.function("callshapes", "leaf")
    assert leaf.self_cycles == leaf.total_cycles
    assert leaf.total_cycles == sum(c for p, c in stacks.items() if p.endswith(";leaf"))


def test_detach_leaves_the_machine_as_it_was(hello_elf: Path) -> None:
    machine = Machine()
    kernel = Kernel(machine)
    profiler = Profiler(kernel).attach()
    assert "run" in vars(machine) and "spawn" in vars(kernel)
    kernel.spawn(hello_elf, ["hello"])
    kernel.run()
    profile = profiler.finish()
    assert "run" not in vars(machine) and "spawn" not in vars(kernel)
    assert "charge_all" not in vars(machine.accounting)
    before = profile.total
    kernel.spawn(hello_elf, ["hello"])
    kernel.run()  # runs on, unprofiled: the profile no longer moves
    assert profile.total == before < machine.tally().cycles


def test_profiling_needs_accounting() -> None:
    with pytest.raises(UserError, match="accounting"):
        Profiler(Kernel(Machine(accounting=False)))


def test_function_symbols_name_a_guests_functions(hello_elf: Path) -> None:
    symbols = function_symbols(hello_elf.read_bytes())
    address, size = symbol(hello_elf, "main")
    assert symbols.function_at(address) == "main"
    assert symbols.function_at(address + size - 1) == "main"
    assert symbols.function_at(0x10) is None


def test_function_symbols_refuse_what_is_not_an_elf() -> None:
    with pytest.raises(UserError):
        function_symbols(b"not an elf at all", name="junk")


def test_profile_ipc_command_names_the_handler_in_json() -> None:
    args = ["profile", "ipc", "--mode", "underbridge", "--rounds", "5", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    echo = [row["function"] for row in report["programs"]["echo"]["top"]]
    assert echo[0] == "handle"
    assert report["unattributed_cycles"] == 0


def test_a_flame_graph_without_pyinferno_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyinferno", None)  # makes the import fail
    with pytest.raises(UserError, match="pyinferno"):
        Profile("t", 1, {"a": 1}).flame_graph_svg()
