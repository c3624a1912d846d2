"""`underbridge bench pku-shared`: the drawbacks of the talk's design choice 2, measured.

Under pku-shared (kernel/ipc/pku_shared.py) every placed server's pages are entries in
every joined application's page table. On one machine, with the echo server placed
and N pingpong applications joined (each connected to echo, kept alive), this counts:
  join          what one application's first connection costs: the entries copied
                into its table, the page-table frames they needed, the code scanned;
  place_server  placing one more server (ramdisk's image and stack): entries written
                in the N applications' tables;
  heap_grow     the placed echo server's heap growing by one page (what its mmap does:
                VmSpace.map_anonymous): entries written in the N tables;
  connection    a placed server (pingpong --as-server) connecting to echo: the gate,
                control page, save area, server stack and buffer, copied N times;
  keys          protection keys still free after placing two servers with their
                connections, and the keys an application keeps for its own use (none:
                the kernel sets its PKRU, and its code may not write PKRU);
  refused       an application that uses a key of its own (guest/attacks/pku_own_keys.c)
                connecting to echo: the kernel's answer.
No published figure gives the cycles of a page-table entry write, so these are counts
of entries (and frames), never cycles; the simulated cycles of the connect syscalls
themselves are the table's syscall rows, as under every design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.table import Table

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.fs.storage import RAMDISK_BASE
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.ipc.pku_shared import PkuSharedIpc
from underbridge.kernel.ipc.shared_view import Counters
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.connection import Connection
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine

APP_BASE = 0x0A00_0000  # the applications' image, above every server region used here
OWN_KEYS_BASE = 0x0C00_0000
_FOREVER = "1000000000"  # pingpong's rounds: it stays alive while we measure


@dataclass(frozen=True, slots=True)
class Cost:
    pte_writes: int  # leaf entries written in applications' page tables
    table_frames: int  # page-table frames those tables needed for them
    scanned_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DrawbackReport:
    apps: int
    join: Cost
    place_server: Cost
    heap_grow: Cost
    connection: Cost
    keys_free: int
    app_own_keys: int
    app_map_window: tuple[int, int]
    refused: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _delta(before: Counters, after: Counters) -> Cost:
    return Cost(
        after.pte_writes - before.pte_writes,
        after.table_frames - before.table_frames,
        after.scanned_bytes - before.scanned_bytes,
    )


def _snapshot(design: PkuSharedIpc, kernel: Kernel) -> Counters:
    return Counters(**asdict(design.shared_view(kernel).counters))


def _connected(group: CapGroup) -> bool:
    return any(isinstance(o, Connection) for o in group.owned) or not group.running


def measure(apps: int = 4) -> DrawbackReport:
    if apps < 1:
        raise ValueError("at least one application is needed")
    kernel = Kernel(Machine(), ipc="pku-shared")
    design = kernel.ipc
    assert isinstance(design, PkuSharedIpc)
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    pingpong = build_program("pingpong", base=APP_BASE)
    joins = []
    clients = []
    for index in range(apps):
        before = _snapshot(design, kernel)
        client = kernel.spawn(pingpong, ["pingpong", _FOREVER, "echo"], name=f"app{index}")
        kernel.run(until=lambda c=client: _connected(c))
        if not client.running:
            raise RuntimeError(
                f"app{index} ended: {bytes(client.console).decode(errors='replace')}"
            )
        joins.append(_delta(before, _snapshot(design, kernel)))
        clients.append(client)

    before = _snapshot(design, kernel)
    kernel.spawn(build_program("ramdisk", base=RAMDISK_BASE), ["ramdisk"], in_kernel=True)
    place_server = _delta(before, _snapshot(design, kernel))

    before = _snapshot(design, kernel)
    echo.vmspace.map_anonymous(ECHO_BASE + ks.REGION_SIZE // 4, 1)
    heap_grow = _delta(before, _snapshot(design, kernel))

    before = _snapshot(design, kernel)
    relay = kernel.spawn(
        build_program("pingpong", base=PINGPONG_BASE),
        ["pingpong", _FOREVER, "echo", "--as-server"],
        in_kernel=True,
    )
    kernel.run(until=lambda: _connected(relay))
    connection = _delta(before, _snapshot(design, kernel))

    refused = kernel.spawn(
        build_program(guest_root() / "attacks" / "pku_own_keys.c", base=OWN_KEYS_BASE),
        ["pku_own_keys"],
    )
    kernel.run(until=lambda: not refused.running)
    joined = design.shared_view(kernel).of(clients[0])
    assert joined is not None
    return DrawbackReport(
        apps=apps,
        join=joins[0],
        place_server=place_server,
        heap_grow=heap_grow,
        connection=connection,
        keys_free=design.keys.available,
        app_own_keys=0,  # its PKRU is the kernel's (Joined.pkru), and it may not write it
        app_map_window=clients[0].vmspace.guest_window,
        refused=bytes(refused.console).decode(errors="replace").strip(),
    )


def report_table(report: DrawbackReport) -> Table:
    """The terminal report: one row per operation, then keys and the refused application."""
    table = Table(
        title=f"underbridge bench pku-shared: {report.apps} applications joined",
        caption="no published cycle figure exists for a page-table entry write: counts only",
    )
    for column in ("operation", "entries written", "table frames", "code scanned (bytes)"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for name in ("join", "place_server", "heap_grow", "connection"):
        cost = getattr(report, name)
        table.add_row(
            name, f"{cost.pte_writes:,}", f"{cost.table_frames:,}", f"{cost.scanned_bytes:,}"
        )
    low, high = report.app_map_window
    table.add_row("keys free / an application's own", f"{report.keys_free} / {report.app_own_keys}")
    table.add_row("an application's memory objects", f"[{low:#x}, {high:#x})")
    table.add_row("an application with keys of its own", report.refused.splitlines()[-1])
    return table
