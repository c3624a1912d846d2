"""`underbridge bench crash`: YCSB-A while the storage servers are killed at seeded
simulated instants, then a check that nothing the application saw commit was lost.

The run: the ramdisk and the fs server start under the kernel's supervisor
(kernel/supervisor.py), which restarts a server that dies; the application is
guest/apps/ycsb/ycsb_crash.c, YCSB-A's records and operations (ycsb.c's stream) with a
ledger: it prints every UPDATE that failed and reopens the database after a failure.
`injections` times, the target server (fs, ramdisk, or each in turn for "both") is
killed at an instant drawn from `seed`: the next one lies a uniform draw in [1, gap]
cycles after the first operation that succeeded after the previous kill, where gap is
a reference run's operation phase divided among twice the injections, so the kills
spread over about the first quarter of the operations' cycles (the rest is room for
the operations that fail and are followed by a reopen)
and land wherever the CPU is: inside requests, inside in-kernel gate calls, in the
application. `landed` counts where (whose code the CPU ran as the kill fell).
After each kill the run goes on until the application's next operation succeeds: that
span, in simulated cycles and in wall time, is the recovery cost (issue 15 item 6).

The checks at the end (underbridge.bench.crash_check): the database, opened as the
next open finds it, passes integrity_check; every UPDATE the application saw commit
is there with its value (`lost_committed` counts those that are not), none that failed
is (`present_failed`); the disk passes the ubfs checker (`fs_check`, its problems).
The expected table comes from the workload's Python twin (ycsb_workload), replayed
with the ledger's failed operations left out; nothing is read back from the guest but
its ledger and its database.

Determinism: the same (mode, target, injections, seed, records, ops) gives the same
kills, the same ledger and the same simulated cycles; only wall times vary.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from underbridge.bench.crash_check import Rows, database_state
from underbridge.bench.ycsb import GuestCounter
from underbridge.bench.ycsb_workload import Update, YcsbGenerator
from underbridge.fs.storage import FS_BASE, RAMDISK_BASE, Storage, start_storage
from underbridge.fs.ubfs import Ubfs
from underbridge.guestbuild.sqlite_source import amalgamation_dir, sqlite_object
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.supervisor import Policy
from underbridge.machine.cpu import Machine

TARGETS = ("fs", "ramdisk", "both")
# No backoff and no limit to speak of: the recovery measured is the system's, not a
# policy's wait (a restart the CPU would idle for happens at once anyway).
RESTART_AT_ONCE = Policy(limit=10_000_000, backoff=0)
APP_BASE = 0x0800_0000
DB_PATH = "/ycsb.db"
FAILED = re.compile(r"^ycsb-crash: failed (\d+)$", re.M)
DONE = re.compile(r"^ycsb-crash: done ops=(\d+) updates=(\d+) failed=(\d+) .*$", re.M)


def build_app() -> Path:
    """The crash-tolerant YCSB guest: ycsb_crash.c, the VFS, musl and SQLite."""
    app = guest_root() / "apps" / "ycsb"
    return build_program(
        app / "ycsb_crash.c",
        base=APP_BASE,
        libc="musl",
        extra_sources=[app / "ubvfs.c", app / "mark.c"],
        extra_objects=[sqlite_object()],
        include_dirs=[amalgamation_dir()],
    )


@dataclass(frozen=True, slots=True)
class CrashSpec:
    mode: str
    target: str
    seed: int
    records: int
    ops: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """One kill: whom, when, where the CPU was, and how long until the application's
    next success."""

    target: str
    landed: str  # whose code the CPU ran: "fs", "ramdisk", "app", or "idle"
    in_call: bool  # on another group's thread: inside a gate call (servers in kernel)
    died_at: int  # simulated cycles
    cycles: int  # from the kill to the next operation that succeeded
    wall_s: float


@dataclass
class CrashResult:
    mode: str
    target: str
    seed: int
    records: int
    ops: int
    injections: int  # kills made
    restarts: int  # restarts the supervisor made (a kill can cause more than one)
    restart_causes: dict[str, int]  # "server: how it ended" -> count
    committed_ops: int  # operations that returned success (reads and updates)
    committed_updates: int
    failed_updates: int
    lost_committed: int  # committed updates whose value is not in the database
    present_failed: int  # failed updates whose value is
    table_matches: bool  # the whole table is the expected one (load and updates)
    integrity: str
    fs_check: list[str]
    recoveries: list[Recovery] = field(default_factory=list)
    wall_s: float = 0.0

    def landed(self) -> dict[str, int]:
        """Where the kills landed: whose code ran, and how many inside gate calls."""
        counts = {"fs": 0, "ramdisk": 0, "app": 0, "idle": 0, "in_gate_calls": 0}
        for recovery in self.recoveries:
            counts[recovery.landed] += 1
            counts["in_gate_calls"] += recovery.in_call
        return counts

    def recovery_summary(self) -> dict[str, float]:
        """Median and max recovery, simulated cycles and wall milliseconds."""
        if not self.recoveries:
            return {}
        cycles = [r.cycles for r in self.recoveries]
        walls = [r.wall_s * 1000 for r in self.recoveries]
        return {
            "recovery_cycles_median": statistics.median(cycles),
            "recovery_cycles_max": max(cycles),
            "recovery_wall_ms_median": round(statistics.median(walls), 3),
            "recovery_wall_ms_max": round(max(walls), 3),
        }

    @property
    def ok(self) -> bool:
        return (
            self.lost_committed == 0
            and self.present_failed == 0
            and self.table_matches
            and self.integrity == "ok"
            and not self.fs_check
        )

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("recoveries")
        return {**data, "landed": self.landed(), **self.recovery_summary(), "ok": self.ok}


def expected_table(records: int, ops: int, seed: int, failed: set[int]) -> tuple[Rows, dict]:
    """The table after the load and every op but the failed UPDATEs; and, per cell
    (key, field), the index of the committed UPDATE that wrote it last."""
    generator = YcsbGenerator(seed)
    rows = {key: list(values) for key, values in generator.load_records(records)}
    writer: dict[tuple[str, int], int] = {}
    for index, op in enumerate(generator.operations(records, ops, "a")):
        if isinstance(op, Update) and index not in failed:
            rows[op.key][op.field] = op.value
            writer[(op.key, op.field)] = index
    return {key: tuple(values) for key, values in rows.items()}, writer


def _cell(rows: Rows, key: str, column: int) -> str | None:
    fields = rows.get(key)
    return None if fields is None else fields[column]


def compare(
    expected: Rows, writer: dict, actual: Rows | None, failed_values: list[tuple[str, int, str]]
) -> tuple[int, int]:
    """(lost_committed, present_failed): cells a committed UPDATE wrote last that do not
    hold its value, and failed UPDATEs whose value sits where they would have put it
    (and no committed one put the same)."""
    actual = actual or {}
    lost = sum(_cell(actual, key, column) != expected[key][column] for key, column in writer)
    present = sum(
        _cell(actual, key, column) == value != expected[key][column]
        for key, column, value in failed_values
    )
    return lost, present


def _cause(name: str, ending: str) -> str:
    """A restart's cause without its addresses: "ramdisk: faulted: #PF read: page not
    present" for every such fault."""
    return f"{name}: " + re.sub(r" (of|at) 0x[0-9a-f]+", "", ending.split(",")[0])


def _code_at(rip: int) -> str:
    """Whose code lies at `rip`: a server's region, or the application's."""
    for name, base in (("fs", FS_BASE), ("ramdisk", RAMDISK_BASE)):
        if base <= rip < base + REGION_SIZE:
            return name
    return "app"


class _Run:
    """One bench run: the stack under its supervisor, the app, the kill loop."""

    def __init__(self, mode: str, seed: int, records: int, ops: int) -> None:
        self.kernel = Kernel(Machine(), ipc=mode)
        self.storage: Storage = start_storage(
            self.kernel, in_kernel=self.kernel.ipc.traits.servers_in_kernel
        )
        self.supervisor = self.storage.supervisor
        for name in ("fs", "ramdisk"):  # restart at once, as often as the run kills
            self.supervisor.servers[name].policy = RESTART_AT_ONCE
        elf = build_app()
        self.app = self.kernel.spawn(
            elf, ["ycsb_crash", str(records), str(ops), str(seed), DB_PATH], abi="linux"
        )
        self.progress = GuestCounter(self.kernel, self.app, symbol(elf, "ycsb_progress")[0])
        self.succeeded = GuestCounter(self.kernel, self.app, symbol(elf, "ycsb_succeeded")[0])
        self.records = records
        self._where: tuple[str, bool] = ("idle", False)  # where the last kill fell
        restarts = self.supervisor.restarts
        kernel_after_event, kernel_in_call = (
            self.supervisor.after_event,
            self.supervisor.in_kernel_call,
        )

        def after_event() -> None:  # between kernel events
            where, before = self._cpu_at(), len(restarts)
            kernel_after_event()
            if len(restarts) > before:
                self._where = where

        def in_kernel_call(rip: int) -> None:  # inside the kernel's gate call for the app
            where, before = (_code_at(rip), True), len(restarts)
            kernel_in_call(rip)
            if len(restarts) > before:
                self._where = where

        self.supervisor.after_event = after_event  # type: ignore[method-assign]
        self.supervisor.in_kernel_call = in_kernel_call  # type: ignore[method-assign]

    def _cpu_at(self) -> tuple[str, bool]:
        """Whose code the current thread runs, and whether it is another group's thread
        (a gate call into a server in kernel space)."""
        thread = self.kernel.sched.current
        if thread is None or not thread.alive:
            return ("idle", False)
        code = _code_at(thread.context.rip)
        return (code, code != "app" and thread.group.name != code)

    def run_until(self, done: Callable[[], bool]) -> None:
        self.kernel.run(until=lambda: done() or not self.app.running)

    def load(self) -> int:
        """Run the load phase; the clock when the operations begin."""
        self.run_until(lambda: self.progress.read() > self.records)
        return self.kernel.machine.clock()

    def kill(self, target: str, instant: int) -> Recovery | None:
        """Kill `target` at `instant`, run until the app's next success; None if the
        app ended first."""
        restarts = len(self.supervisor.restarts)
        self.supervisor.kill_at(target, instant)
        self.run_until(lambda: len(self.supervisor.restarts) > restarts)
        if len(self.supervisor.restarts) == restarts:
            return None
        landed, in_call = self._where
        started, before = time.perf_counter(), self.succeeded.read()
        died_at = self.supervisor.restarts[restarts].died_at
        self.run_until(lambda: self.succeeded.read() > before)
        if self.succeeded.read() == before:
            return None
        cycles = self.kernel.machine.clock() - died_at
        return Recovery(target, landed, in_call, died_at, cycles, time.perf_counter() - started)


def ops_span(mode: str, records: int, ops: int, seed: int) -> int:
    """Simulated cycles of the operation phase of a run without kills (the yardstick
    the kill instants are spread over)."""
    run = _Run(mode, seed, records, ops)
    start = run.load()
    run.run_until(lambda: False)
    return max(1, run.kernel.machine.clock() - start)


def run_crash(
    mode: str,
    injections: int,
    seed: int = 1,
    target: str = "fs",
    records: int = 100,
    ops: int = 400,
    progress: Callable[[int], None] | None = None,
) -> CrashResult:
    """progress: called with the number of injections done after each one."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if injections < 0 or records < 1 or ops < 1:
        raise ValueError("injections must be >= 0, records and ops >= 1")
    wall = time.perf_counter()
    gap = ops_span(mode, records, ops, seed) // (2 * injections + 2) + 1
    rng = random.Random(seed)
    run = _Run(mode, seed, records, ops)
    run.load()
    recoveries: list[Recovery] = []
    for number in range(injections):
        victim = target if target != "both" else ("fs", "ramdisk")[number % 2]
        recovery = run.kill(victim, run.kernel.machine.clock() + rng.randint(1, gap))
        if recovery is None:
            break
        recoveries.append(recovery)
        if progress is not None:
            progress(number + 1)
    run.run_until(lambda: False)
    spec = CrashSpec(mode, target, seed, records, ops)
    return _check(run, spec, recoveries, time.perf_counter() - wall)


def _check(run: _Run, spec: CrashSpec, recoveries: list[Recovery], wall_s: float) -> CrashResult:
    mode, target, seed, records, ops = spec.mode, spec.target, spec.seed, spec.records, spec.ops
    console = bytes(run.app.console).decode(errors="replace")
    done = DONE.search(console)
    if run.app.exit_status != 0 or done is None:
        raise RuntimeError(f"ycsb_crash did not finish ({run.app.state.value}): {console[-400:]!r}")
    failed = {int(m) for m in FAILED.findall(console)}
    expected, writer = expected_table(records, ops, seed, failed)
    generator = YcsbGenerator(seed)
    list(generator.load_records(records))
    failed_values = [
        (op.key, op.field, op.value)
        for index, op in enumerate(generator.operations(records, ops, "a"))
        if index in failed and isinstance(op, Update)
    ]
    image = run.storage.disk_image()
    state = database_state(image)
    lost, present = compare(expected, writer, state.rows, failed_values)
    updates = int(done[2])
    return CrashResult(
        mode=mode,
        target=target,
        seed=seed,
        records=records,
        ops=ops,
        injections=len(recoveries),
        restarts=len(run.supervisor.restarts),
        restart_causes=dict(Counter(_cause(r.name, r.ending) for r in run.supervisor.restarts)),
        committed_ops=run.succeeded.read(),
        committed_updates=updates - len(failed),
        failed_updates=len(failed),
        lost_committed=lost,
        present_failed=present,
        table_matches=state.rows == expected,
        integrity=state.integrity,
        fs_check=Ubfs(image).check(),
        recoveries=recoveries,
        wall_s=round(wall_s, 3),
    )
