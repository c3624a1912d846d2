"""Live migration (kernel/migration.py, kernel/ipc/migrate.py): the echo server moves
between user space and kernel space under a running pingpong client, real binaries."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.kernel.test_ipc import ROUND_TRIP_EVENTS, UNDERBRIDGE_EVENTS
from underbridge.abi.syscalls import Sys
from underbridge.fs.storage import FS_BASE, FSTEST_BASE, RAMDISK_BASE, start_storage
from underbridge.fs.ubfs import Ubfs
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.migrate import region_stack_top
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.costs import cycles
from underbridge.machine.cpu import Machine
from underbridge.machine.physmem import PAGE_SIZE

ECHO_BASE = 0x0100_0000
PINGPONG_BASE = 0x0200_0000
USER_PATH = ROUND_TRIP_EVENTS["sel4"]  # a user-space server under underbridge: seL4's path
GATE_PATH = UNDERBRIDGE_EVENTS["app-server"]
ROUNDS = 40


class Stage:
    """echo and a pingpong client; `trip(i)` is the events and cycles of round trip i."""

    def __init__(
        self, *, in_kernel: bool = False, migratable: bool = True, client_in_kernel: bool = False
    ) -> None:
        self.machine = Machine()
        self.kernel = Kernel(self.machine, ipc="underbridge")
        stack = {"stack_top": region_stack_top(ECHO_BASE)} if migratable else {}
        self.echo = self.kernel.spawn(
            build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=in_kernel, **stack
        )
        self.kernel.run(until=self._serving)
        self.client = self.kernel.spawn(
            build_program("pingpong", base=PINGPONG_BASE),
            ["pingpong", str(ROUNDS), "echo"],
            in_kernel=client_in_kernel,
        )
        self.marks = 0  # pingpong's markers (zero-length writes) so far
        self.calls: list = []  # the tally at each of the client's IPC_CALLs
        self.kernel.syscall_observers.append(self._note)

    def _serving(self) -> bool:
        return "echo" in self.kernel.services and self.echo.threads[0].state is ThreadState.BLOCKED

    def _note(self, thread, number: int, _args) -> None:
        if number == Sys.IPC_CALL and thread.group is self.client:
            self.calls.append(self.machine.tally())
        if number == Sys.WRITE and _args[1] == 0 and thread.group is self.client:
            self.marks += 1

    def run_until_call(self, count: int) -> None:
        self.kernel.run(until=lambda: len(self.calls) >= count)

    def finish(self) -> None:
        self.kernel.run(until=lambda: not self.client.running)
        assert self.client.state is GroupState.EXITED, self.client.fault
        assert self.client.exit_status == 0
        assert bytes(self.client.console) == f"pingpong: {ROUNDS} rounds ok\n".encode()
        assert self.echo.running

    def trip(self, index: int) -> tuple[dict[str, int], int]:
        delta = self.calls[index + 1] - self.calls[index]
        return {e: n for e, n in delta.events.items() if n}, delta.cycles


def mapped_in_kernel_table(machine: Machine, low: int, high: int) -> list[int]:
    return [
        vaddr
        for vaddr in range(low, high, PAGE_SIZE)
        if machine.kernel_space.lookup(vaddr) is not None
    ]


@pytest.fixture(scope="module")
def round_trip() -> Stage:
    """echo moves in after 10 calls (while serving one: pending) and out after 25."""
    stage = Stage()
    stage.run_until_call(10)
    stage.moved_in = stage.kernel.migrate(stage.echo, to_kernel=True, reason="test in")
    stage.state_at_request = stage.moved_in.state
    stage.run_until_call(25)
    stage.moved_out = stage.kernel.migrate(stage.echo, to_kernel=False, reason="test out")
    stage.finish()
    return stage


def test_calls_take_the_new_path_after_each_migration(round_trip):
    assert round_trip.trip(5) == (USER_PATH, 1203)
    assert round_trip.trip(15) == (GATE_PATH, 953)
    assert round_trip.trip(30) == (USER_PATH, 1203)


def test_a_migration_asked_for_during_a_call_waits_for_quiescence(round_trip):
    assert round_trip.state_at_request == "pending"
    assert [m.state for m in round_trip.kernel.migrations] == ["done", "done"]
    assert [m.reason for m in round_trip.kernel.migrations] == ["test in", "test out"]
    # Every call was answered once: pingpong checks each reply against its round number.


def test_a_migration_is_made_of_charged_events(round_trip):
    moved_in, moved_out = round_trip.moved_in, round_trip.moved_out
    for migration in (moved_in, moved_out):
        assert migration.pages == len(round_trip.echo.vmspace.private_pages)
        assert migration.connections == 1
        charged = sum(cycles(row) * n for row, n in migration.charges().events)
        assert migration.cycles == charged > 0
        assert migration.events["tlb_flushes"] >= migration.pages
        assert migration.events["key_retags"] == migration.pages
    assert moved_in.events["gates_generated"] >= 1
    assert "gates_generated" not in moved_out.events
    # the figures in the README's section "Live migration"
    assert (moved_in.cycles, moved_out.cycles) == (5_717, 6_258)


def test_moving_out_leaves_nothing_of_the_server_in_the_kernel_page_table(round_trip):
    machine, kernel = round_trip.machine, round_trip.kernel
    assert kernel.placement.domain_of(round_trip.echo) is None
    assert mapped_in_kernel_table(machine, ECHO_BASE, ECHO_BASE + ks.REGION_SIZE) == []
    assert kernel.ipc.gates() == []
    assert round_trip.echo.vmspace.table is not machine.kernel_space
    assert round_trip.echo.threads[0].context.cpl == 3


def run_to_quiescence_twice() -> list[int]:
    stage = Stage()
    stage.run_until_call(3)
    first = stage.kernel.migrate(stage.echo, to_kernel=True)
    stage.run_until_call(6)
    second = stage.kernel.migrate(stage.echo, to_kernel=False)
    stage.finish()
    return [first.cycles, second.cycles, stage.machine.tally().cycles]


def test_a_migration_costs_the_same_cycles_on_every_run():
    assert run_to_quiescence_twice() == run_to_quiescence_twice()


def refused_changes_nothing(stage: Stage, ask: Callable[[], object], report: str) -> None:
    before = (
        stage.echo.vmspace.table,
        stage.echo.threads[0].context.pkru,
        stage.kernel.placement.domain_of(stage.echo),
        stage.kernel.ipc.keys.available,
    )
    migration = ask()
    assert migration.state == "refused"
    assert report in migration.report
    after = (
        stage.echo.vmspace.table,
        stage.echo.threads[0].context.pkru,
        stage.kernel.placement.domain_of(stage.echo),
        stage.kernel.ipc.keys.available,
    )
    assert after == before


def test_a_server_with_a_page_outside_its_region_is_refused_and_keeps_serving():
    stage = Stage(migratable=False)  # its stack at the top of user space
    stage.run_until_call(3)
    refused_changes_nothing(
        stage,
        lambda: stage.kernel.migrate(stage.echo, to_kernel=True),
        "lies outside its region",
    )
    stage.finish()
    assert stage.trip(10) == (USER_PATH, 1203)


def test_moving_where_it_already_is_is_refused():
    stage = Stage()
    refused_changes_nothing(
        stage,
        lambda: stage.kernel.migrate(stage.echo, to_kernel=False),
        "in user space already",
    )
    stage.finish()


def test_an_application_cannot_be_moved():
    stage = Stage()
    migration = stage.kernel.migrate(stage.client, to_kernel=True)
    assert migration.state == "refused"
    assert "serves no service" in migration.report
    stage.finish()


def test_a_design_without_a_mover_refuses():
    kernel = Kernel(Machine(), ipc="sel4")
    group = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"])
    migration = kernel.migrate(group, to_kernel=True)
    assert (migration.state, migration.report) == (
        "refused",
        "the sel4 design cannot move servers",
    )


def test_a_server_spawned_in_kernel_space_moves_out_and_back_in():
    stage = Stage(in_kernel=True)
    stage.run_until_call(5)
    out = stage.kernel.migrate(stage.echo, to_kernel=False)
    stage.run_until_call(15)
    back = stage.kernel.migrate(stage.echo, to_kernel=True)
    stage.finish()
    assert (out.state, back.state) == ("done", "done")
    assert stage.trip(2) == (GATE_PATH, 953)
    assert stage.trip(10) == (USER_PATH, 1203)
    assert stage.trip(30) == (GATE_PATH, 953)


def test_a_group_that_ended_is_refused():
    stage = Stage()
    stage.finish()
    stage.kernel.kill(stage.echo)
    migration = stage.kernel.migrate(stage.echo, to_kernel=True)
    assert migration.report == "echo has ended"


# -- a server that is a client too: fs calls ramdisk ------------------------------------


class StorageStage:
    """ramdisk and fs (migratable), and fstest's suite as their application."""

    def __init__(self, *, in_kernel: bool) -> None:
        self.machine = Machine()
        self.kernel = Kernel(self.machine, ipc="underbridge")
        self.storage = start_storage(self.kernel, in_kernel=in_kernel, migratable=True)
        self.app = self.kernel.spawn(build_program("fstest", base=FSTEST_BASE), ["fstest", "suite"])
        self.calls = 0  # the application's IPC_CALLs (each one fs request)
        self.kernel.syscall_observers.append(self._note)

    def _note(self, thread, number: int, _args) -> None:
        if number == Sys.IPC_CALL and thread.group is self.app:
            self.calls += 1

    def move_both(self, *, to_kernel: bool) -> list:
        """ramdisk then fs in (fs calls ramdisk, so ramdisk goes first); fs then ramdisk out."""
        fs, ramdisk = self.storage.fs, self.storage.ramdisk
        done = []
        for group in (ramdisk, fs) if to_kernel else (fs, ramdisk):
            migration = self.kernel.migrate(group, to_kernel=to_kernel, reason="test")
            self.kernel.run(until=lambda m=migration: m.state != "pending")
            assert migration.state == "done", migration.report
            done.append(migration)
        return done

    def served(self, group) -> int:
        address = symbol(build_program(group.name, base=group_base(group)), "ub_calls_served")[0]
        raw = self.machine.read_virtual(group.vmspace.table, address, 8)
        return int.from_bytes(raw, "little")

    def finish(self) -> None:
        self.kernel.run(until=lambda: not self.app.running)
        assert self.app.exit_status == 0, bytes(self.app.console)
        assert bytes(self.app.console) == b"fstest: ok\n"
        assert Ubfs(self.storage.disk_image()).check() == []


def group_base(group) -> int:
    return {"fs": FS_BASE, "ramdisk": RAMDISK_BASE}[group.name]


@pytest.mark.parametrize("in_kernel", [False, True])
def test_fs_and_ramdisk_round_trip_under_a_running_fs_client(in_kernel):
    """In the middle of fstest's suite (its open handles included), both servers move
    and back; every request is served once: fs's own counter, in its memory, agrees."""
    stage = StorageStage(in_kernel=in_kernel)
    served_before = stage.served(stage.storage.fs)
    stage.kernel.run(until=lambda: stage.calls >= 40)
    there = stage.move_both(to_kernel=not in_kernel)
    stage.kernel.run(until=lambda: stage.calls >= 80)
    back = stage.move_both(to_kernel=in_kernel)
    stage.finish()
    assert stage.served(stage.storage.fs) - served_before == stage.calls
    placement = stage.kernel.placement
    for group in (stage.storage.fs, stage.storage.ramdisk):
        assert (placement.domain_of(group) is not None) == in_kernel
    assert [m.state for m in there + back] == ["done"] * 4


def test_fs_cannot_move_in_before_the_ramdisk_it_calls():
    stage = StorageStage(in_kernel=False)
    migration = stage.kernel.migrate(stage.storage.fs, to_kernel=True)
    assert migration.state == "refused"
    assert migration.report.startswith("fs calls ramdisk, in user space")
    stage.finish()


def test_ramdisk_cannot_move_out_under_fs_in_kernel_space():
    stage = StorageStage(in_kernel=True)
    migration = stage.kernel.migrate(stage.storage.ramdisk, to_kernel=False)
    assert migration.state == "refused"
    assert migration.report.startswith("fs, in kernel space, call ramdisk")
    stage.finish()


def test_an_in_kernel_client_keeps_its_gate_address_while_echo_moves_out_and_in():
    """pingpong, in kernel space, calls echo's gate itself; while echo is out, the same
    address holds the kernel's forwarder (an IPC_CALL on the kernel's path to a server
    in user space), and the gate again once echo is back: no IPC_CALL after that."""
    stage = Stage(in_kernel=True, client_in_kernel=True)
    kernel = stage.kernel
    kernel.run(until=lambda: stage.marks >= 1)  # pingpong's marker before its loop
    (gate_at,) = [g.address for g in kernel.ipc.gates()]
    out = kernel.migrate(stage.echo, to_kernel=False)
    stage.run_until_call(20)
    back = kernel.migrate(stage.echo, to_kernel=True)
    kernel.run(until=lambda: back.state != "pending")
    assert [g.address for g in kernel.ipc.gates()] == [gate_at]
    stage.finish()
    assert (out.state, back.state) == ("done", "done")
    assert stage.trip(10)[0] == USER_PATH
    # 20 IPC_CALLs through the forwarder (echo moved in after the 20th), then the gate
    assert len(stage.calls) == 20


def test_a_binary_admission_refuses_is_not_moved_in_and_nothing_changes():
    """Admission scans the binary as spawning in kernel space does: one whose code can
    change PKRU (here the group's binary is swapped for pkru_writer's, linked at echo's
    base) is refused with the scanner's report, and echo keeps serving from user space."""
    stage = Stage()
    stage.run_until_call(3)
    stage.echo.elf = build_program(
        guest_root() / "attacks" / "pkru_writer.c", base=ECHO_BASE
    ).read_bytes()

    def ask() -> object:  # asked during a call: refused once echo is quiescent
        migration = stage.kernel.migrate(stage.echo, to_kernel=True)
        stage.kernel.run(until=lambda: migration.state != "pending")
        return migration

    refused_changes_nothing(stage, ask, "can change PKRU")
    stage.finish()
    assert stage.trip(10) == (USER_PATH, 1203)


def test_without_enough_protection_keys_moving_in_is_refused_and_nothing_changes():
    """echo needs one key in kernel space (its domain's; its application's connection
    takes none, the key economy): with none free, the migration is refused."""
    stage = Stage()
    stage.run_until_call(3)
    keys = stage.kernel.ipc.keys
    while keys.available > 0:
        keys.allocate("test: someone else's")

    def ask() -> object:
        migration = stage.kernel.migrate(stage.echo, to_kernel=True)
        stage.kernel.run(until=lambda: migration.state != "pending")
        return migration

    refused_changes_nothing(stage, ask, "no protection key left for echo: it needs 1")
    stage.finish()


def test_a_traced_migration_is_marked_in_the_trace_and_costs_the_same(tmp_path, round_trip):
    from tests.kernel.test_trace import check_chrome_trace, traced

    stages: list[Stage] = []

    def run() -> None:
        stage = Stage()
        stage.run_until_call(10)
        stage.kernel.migrate(stage.echo, to_kernel=True, reason="traced in")
        stage.run_until_call(25)
        stage.kernel.migrate(stage.echo, to_kernel=False, reason="traced out")
        stage.finish()
        stages.append(stage)

    doc, _session = traced(run, tmp_path)
    check_chrome_trace(doc)
    marks = [e for e in doc["traceEvents"] if e.get("cat") == "lifecycle"]
    assert [(m["name"], m["args"]["to"], m["args"]["reason"]) for m in marks] == [
        ("migrate echo", "kernel space", "traced in"),
        ("migrate echo", "user space", "traced out"),
    ]
    (stage,) = stages
    assert [m.cycles for m in stage.kernel.migrations] == [
        round_trip.moved_in.cycles,
        round_trip.moved_out.cycles,
    ]
    assert [int(m["args"]["cycles"]) for m in marks] == [
        round_trip.moved_in.cycles,
        round_trip.moved_out.cycles,
    ]
