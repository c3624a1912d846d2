"""`underbridge bench ycsb`: SQLite under a YCSB core workload, inside the microkernel.

The workload is one of YCSB's core workloads A-F (bench/ycsb_core.py; default A, the
paper's), a command-line argument of the one ycsb guest binary.

The stack, the same for every IPC design: the RAM-disk block server and the file-system
server (fs/storage.py), and the ycsb guest (guest/apps/ycsb: SQLite built with musl,
its VFS sending every file operation to the fs server over IPC). Under `underbridge`
both servers run in kernel space in execution domains of their own, so the fs server's
calls to the block server are gate calls; under `sel4` and `sel4-kpti` everything runs
in ring 3 and every call goes through the kernel. The application always runs in ring 3.

Measurement: the guest marks the start of the load, its end (= start of the
operations), the end of the operations, and once more straight away; the operations'
cost is the span between the 2nd and 3rd markers minus one marker (bench/markers.py).
Throughput is operations per simulated second at NOMINAL_HZ. Cycles are split by
category (machine/accounting.py): application (the ycsb image: SQLite, musl, the VFS),
servers (fs and ramdisk code), ipc (IPC syscalls' kernel paths, gates) and kernel
(every other kernel charge: markers, the Linux personality's syscalls, context switches).
IPC calls are counted by the servers themselves (the `ub_calls_served` counter each
keeps), read from their memory at the markers: no guest work is added to count them.

Checked, every run: the guest's summary line (the count of every kind of operation,
misses and a checksum of every value read or scanned) must equal the native Python
twin's (bench/ycsb_native.py); and the
database, read back out of the RAM disk through the on-disk format (fs/ubfs.py), must
pass the ubfs consistency check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from underbridge.bench.markers import MarkRecorder
from underbridge.bench.ycsb_core import DEFAULT_WORKLOAD, workload_named
from underbridge.bench.ycsb_migrate import MigrationPlan, migration_rows
from underbridge.bench.ycsb_native import YcsbSummary, run_native
from underbridge.elf.image import parse_elf
from underbridge.errors import UserError
from underbridge.fs.storage import FS_BASE, RAMDISK_BASE, Storage, start_storage
from underbridge.fs.ubfs import Ubfs
from underbridge.guestbuild.sqlite_source import amalgamation_dir, sqlite_object
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.ipc.kernel_space import CONTROL_WINDOW, GATE_WINDOW, REGION_SIZE
from underbridge.kernel.ipc.registry import DESIGNS, design_named
from underbridge.kernel.kernel import IPC_CATEGORY, Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import Thread
from underbridge.machine.costs import NOMINAL_HZ
from underbridge.machine.cpu import Machine

MODES = DESIGNS
YCSB_BASE = 0x0800_0000
DB_NAME = "ycsb.db"
APP, SERVER = "application", "server"
PROGRESS_EVERY_S = 0.2

Progress = Callable[[int, int], None]  # (done, total): records loaded + operations run


class BenchFailed(RuntimeError):
    """The workload did not finish cleanly, or its results do not check out."""


@dataclass(frozen=True, slots=True)
class YcsbResult:
    mode: str
    records: int
    ops: int
    seed: int
    workload: str  # YCSB core workload a..f
    sim_ops_per_sec: float | None  # the sim_ figures and the breakdown are None when
    sim_cycles_per_op: float | None  # measured with --no-accounting (wall time only)
    ipc_calls_per_op: float
    wall_ops_per_sec: float
    breakdown: dict[str, float] | None  # simulated cycles per operation, by category
    calls_per_op: dict[str, float]  # IPC calls per operation, by server
    load_sim_cycles: int | None
    wall_seconds: float  # the whole run: load, operations and checks
    summary: str  # the guest's summary line, equal to the native run's
    fs_check: list[str] = field(default_factory=list)  # ubfs problems (none expected)
    migration: dict[str, object] | None = None  # --migrate-at/--migrate-out-at (ycsb_migrate.py)

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def build_ycsb() -> Path:
    """The ycsb guest: ycsb.c, the VFS and the marker, musl, and SQLite's object."""
    app = guest_root() / "apps" / "ycsb"
    return build_program(
        app / "ycsb.c",
        base=YCSB_BASE,
        libc="musl",
        extra_sources=[app / "ycsb_mix.c", app / "ubvfs.c", app / "mark.c"],
        extra_objects=[sqlite_object()],
        include_dirs=[amalgamation_dir()],
    )


@dataclass(slots=True)
class GuestCounter:
    """A guest's 64-bit counter, read straight from its memory (no guest work)."""

    kernel: Kernel
    group: CapGroup
    address: int

    def read(self) -> int:
        raw = self.kernel.machine.read_virtual(self.group.vmspace.table, self.address, 8)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0


@dataclass(frozen=True, slots=True)
class _Server:
    name: str
    base: int  # its link base: code lies in [base, base + REGION_SIZE) in every mode

    def elf(self) -> Path:
        return build_program(self.name, base=self.base)  # cached: the one storage spawned

    def group(self, storage: Storage) -> CapGroup:
        return getattr(storage, self.name)


SERVERS = (_Server("fs", FS_BASE), _Server("ramdisk", RAMDISK_BASE))


def _attribute_image(machine: Machine, elf: Path, category: str) -> None:
    image = parse_elf(elf.read_bytes())
    machine.attribute(category, min(s.vaddr for s in image.segments), image.end)


class _Run:
    """One benchmark run: the machine, the stack, the guest and its observers."""

    def __init__(
        self,
        mode: str,
        records: int,
        ops: int,
        seed: int,
        workload: str,
        *,
        accounting: bool = True,
        observe: Callable[[Kernel], object] | None = None,
        migrate: tuple[int, bool] | None = None,
    ) -> None:
        """migrate: (N, to_kernel) moves the storage servers after N operations."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if records < 1 or ops < 1:
            raise ValueError("records and ops must be at least 1")
        self.mode, self.records, self.ops, self.seed = mode, records, ops, seed
        self.machine = Machine(accounting=accounting)
        self.kernel = Kernel(self.machine, ipc=mode)
        if observe is not None:  # before anything is spawned (the profiler attaches here)
            observe(self.kernel)
        in_kernel = self.kernel.ipc.traits.servers_in_kernel if migrate is None else not migrate[1]
        self.storage: Storage = start_storage(
            self.kernel, in_kernel=in_kernel, migratable=migrate is not None
        )
        self.plan: MigrationPlan | None = None
        if migrate is not None:
            at, to_kernel = migrate
            order = [self.storage.ramdisk, self.storage.fs]  # fs calls ramdisk
            self.plan = MigrationPlan(at, to_kernel, order if to_kernel else order[::-1], records)
        self.elf = build_ycsb()
        _attribute_image(self.machine, self.elf, APP)
        for server in SERVERS:  # the whole region: in kernel space the rewriter may add code
            self.machine.attribute(
                f"{SERVER}:{server.name}", server.base, server.base + REGION_SIZE
            )
        self.machine.attribute(IPC_CATEGORY, GATE_WINDOW, CONTROL_WINDOW)  # the gates
        self.app = self.kernel.spawn(
            self.elf,
            ["ycsb", str(records), str(ops), str(seed), "/" + DB_NAME, workload],
            abi="linux",
        )
        self.progress_counter = GuestCounter(
            self.kernel, self.app, symbol(self.elf, "ycsb_progress")[0]
        )
        self.call_counters = {
            server.name: GuestCounter(
                self.kernel, server.group(self.storage), symbol(server.elf(), "ub_calls_served")[0]
            )
            for server in SERVERS
        }
        self.calls_at_marks: list[dict[str, int]] = []
        self.recorder = MarkRecorder(self.kernel).watch(self.app)
        self.kernel.syscall_observers.append(self._note_calls)

    def _note_calls(self, _thread: Thread, _number: int, _args: tuple[int, ...]) -> None:
        if len(self.recorder.marks) > len(self.calls_at_marks):  # the recorder just marked
            self.calls_at_marks.append({name: c.read() for name, c in self.call_counters.items()})

    def execute(self, progress: Progress | None) -> None:
        total = self.records + self.ops
        next_report = 0.0

        def finished() -> bool:
            nonlocal next_report
            if self.plan is not None:
                self.plan.poll(self.kernel, self.progress_counter.read())
            if progress is not None and time.perf_counter() >= next_report:
                next_report = time.perf_counter() + PROGRESS_EVERY_S
                progress(min(self.progress_counter.read(), total), total)
            return not self.app.running

        self.kernel.run(until=finished)
        if progress is not None:
            progress(total, total)

    def console(self) -> str:
        return bytes(self.app.console).decode(errors="replace")


def _per_op(run: _Run) -> tuple[float, dict[str, float], dict[str, float], int]:
    """(cycles per op, breakdown per op, calls per op, load cycles) from the markers."""
    marks = run.recorder.marks
    if len(marks) < 4 or len(run.calls_at_marks) < 4:
        raise BenchFailed(f"ycsb made {len(marks)} of its 4 markers:\n{run.console()}")
    load, ops_mark, end, extra = marks[:4]
    marker_cycles = extra.cycles - end.cycles
    cycles = (end.cycles - ops_mark.cycles) - marker_cycles
    categories: dict[str, float] = {}
    for name in sorted({*end.by_category, *ops_mark.by_category, *extra.by_category}):
        span = end.by_category[name] - ops_mark.by_category[name]
        marker = extra.by_category[name] - end.by_category[name]
        categories[name] = (span - marker) / run.ops
    breakdown = {
        APP: categories.pop(APP, 0.0),
        IPC_CATEGORY: categories.pop(IPC_CATEGORY, 0.0),
        "kernel": categories.pop("kernel", 0.0),
        SERVER: sum(v for k, v in categories.items() if k.startswith(SERVER + ":")),
    }
    breakdown.update({k: v for k, v in categories.items() if v})  # per server, and "other"
    before, after = run.calls_at_marks[1], run.calls_at_marks[2]
    calls = {name: (after[name] - before[name]) / run.ops for name in sorted(after)}
    return cycles / run.ops, breakdown, calls, ops_mark.cycles - load.cycles - marker_cycles


def run(
    mode: str,
    records: int,
    ops: int,
    seed: int = 1,
    workload: str = DEFAULT_WORKLOAD,
    *,
    progress: Progress | None = None,
    db_out: Path | None = None,
    accounting: bool = True,
    observe: Callable[[Kernel], object] | None = None,
    migrate_at: int | None = None,
    migrate_out_at: int | None = None,
) -> YcsbResult:
    """Load `records` records and run `ops` operations of YCSB `workload` (a..f) under
    `mode`; check, report.

    accounting=False: wall time only, no simulated figures (what accounting costs).
    observe: called with the kernel before anything is spawned.
    migrate_at / migrate_out_at: move the storage servers into / out of kernel space
    after that many operations (bench/ycsb_migrate.py)."""
    started = time.perf_counter()
    workload = workload_named(workload).name
    migrate = _migration_asked(mode, ops, migrate_at, migrate_out_at)
    bench = _Run(
        mode, records, ops, seed, workload, accounting=accounting, migrate=migrate, observe=observe
    )
    bench.execute(progress)
    console = bench.console()
    if bench.app.state is not GroupState.EXITED or bench.app.exit_status != 0:
        raise BenchFailed(
            f"ycsb ended {bench.app.state.value} (status {bench.app.exit_status},"
            f" fault {bench.app.fault}):\n{console}"
        )
    guest = YcsbSummary.parse(console)
    native = run_native(None, records, ops, seed, workload)
    if guest != native:
        raise BenchFailed(
            f"the guest's results differ from the native run's:\n"
            f"  guest:  {guest.line()}\n  native: {native.line()}"
        )
    disk = Ubfs(bench.storage.disk_image())
    problems = disk.check()
    if db_out is not None:
        db_out.write_bytes(disk.read(DB_NAME))
    cycles, breakdown, calls, load_cycles = _per_op(bench)
    marks = bench.recorder.marks
    migration = None
    if bench.plan is not None:
        migration = bench.plan.report(marks[1], marks[2], marks[3].cycles - marks[2].cycles, ops)
    wall_ops = marks[2].wall - marks[1].wall
    # Without accounting, the simulated figures are None (wall time only).
    return YcsbResult(
        mode=mode,
        records=records,
        ops=ops,
        seed=seed,
        workload=workload,
        sim_ops_per_sec=NOMINAL_HZ / cycles if accounting else None,
        sim_cycles_per_op=cycles if accounting else None,
        ipc_calls_per_op=sum(calls.values()),
        wall_ops_per_sec=ops / wall_ops,
        breakdown=breakdown if accounting else None,
        calls_per_op=calls,
        load_sim_cycles=load_cycles if accounting else None,
        wall_seconds=time.perf_counter() - started,
        summary=guest.line(),
        fs_check=problems,
        migration=migration,
    )


def _migration_asked(
    mode: str, ops: int, migrate_at: int | None, migrate_out_at: int | None
) -> tuple[int, bool] | None:
    """(N, to_kernel) from the options, or None; UserError names a bad combination."""
    if migrate_at is None and migrate_out_at is None:
        return None
    if migrate_at is not None and migrate_out_at is not None:
        raise UserError("--migrate-at and --migrate-out-at exclude each other")
    at = migrate_at if migrate_at is not None else migrate_out_at
    assert at is not None
    if not 0 <= at < ops:
        raise UserError(f"the migration must come after 0 to {ops - 1} operations, not {at}")
    if getattr(design_named(mode), "mover", None) is None:
        raise UserError(f"the {mode} design cannot move servers", hint="use --mode underbridge")
    return at, migrate_at is not None


def result_table(result: YcsbResult) -> Table:
    """The terminal report of one run."""
    table = Table(
        title=f"underbridge bench ycsb --mode {result.mode}: YCSB-{result.workload.upper()}, "
        f"{result.records:,} records, {result.ops:,} operations, "
        f"seed {result.seed}"
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    if result.sim_ops_per_sec is not None and result.sim_cycles_per_op is not None:
        table.add_row("simulated throughput (ops/s at 2.0 GHz)", f"{result.sim_ops_per_sec:,.0f}")
        table.add_row("simulated cycles / operation", f"{result.sim_cycles_per_op:,.0f}")
    for name, cycles in (result.breakdown or {}).items():
        table.add_row(f"  {name}", f"{cycles:,.0f}")
    table.add_row("IPC calls / operation", f"{result.ipc_calls_per_op:.2f}")
    for name, calls in result.calls_per_op.items():
        table.add_row(f"  served by {name}", f"{calls:.2f}")
    table.add_row("wall-time operations / second", f"{result.wall_ops_per_sec:,.1f}")
    table.add_row("wall time of the whole run", f"{result.wall_seconds:.1f} s")
    if result.load_sim_cycles is not None:
        table.add_row("load: simulated cycles", f"{result.load_sim_cycles:,}")
    else:
        table.add_row("simulated cycles", "not counted (--no-accounting)")
    if result.migration is not None:
        migration_rows(table, result.migration)
    table.add_row("results equal the native run's", "yes")
    table.add_row(
        "file system consistent",
        "yes" if not result.fs_check else f"NO: {'; '.join(result.fs_check)}",
    )
    return table
