"""pku-shared (the talk's design choice 2): servers mapped into every application.

Real binaries on the emulated CPU: echo placed in its own key domain in ring 3, its
pages copied into each joined application's page table; the round trips' event
sequences are in test_ipc.py, YCSB's database check in bench/test_ycsb_bench.py.
"""

from __future__ import annotations

import pytest

from underbridge.bench import pku_shared as drawbacks
from underbridge.bench.ipc import ECHO_BASE
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.ipc.pku_shared import PkuSharedIpc
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine
from underbridge.machine.oracle import Violation


def _placed_echo() -> tuple[Kernel, PkuSharedIpc]:
    kernel = Kernel(Machine(), ipc="pku-shared")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    assert echo.threads[0].context.cpl == 3  # placed, but in ring 3
    design = kernel.ipc
    assert isinstance(design, PkuSharedIpc)
    return kernel, design


def test_an_application_reading_a_servers_page_faults_on_its_key() -> None:
    kernel, design = _placed_echo()
    app = kernel.spawn(
        build_program(guest_root() / "attacks" / "app_read_server.c", base=0x0A00_0000),
        ["app", hex(ECHO_BASE)],
    )
    design.shared_view(kernel).join(app)  # what its first IPC_CONNECT does
    mapping = app.vmspace.table.lookup(ECHO_BASE)
    assert (
        mapping is not None
        and mapping.flags.pkey == design.domain_of(next(g for g in design.placed_groups())).key
    )  # the server's page is in the application's table, under echo's key
    kernel.run(until=lambda: not app.running)
    assert app.state is GroupState.FAULTED
    fault = app.fault
    assert fault is not None and fault.vector == 14 and fault.cpl == 3
    assert fault.address == ECHO_BASE and fault.reason is Violation.PKEY_ACCESS_DISABLED
    assert "LEAKED" not in bytes(app.console).decode()


def test_an_application_with_keys_of_its_own_is_refused() -> None:
    kernel, _ = _placed_echo()
    app = kernel.spawn(
        build_program(guest_root() / "attacks" / "pku_own_keys.c", base=0x0C00_0000),
        ["pku_own_keys"],
    )
    kernel.run(until=lambda: not app.running)
    out = bytes(app.console).decode()
    assert "used a protection key of my own" in out
    assert "connect to echo refused: -1" in out  # -EPERM: its code holds wrpkru
    assert app.vmspace.table.lookup(ECHO_BASE) is None  # nothing of a server mapped


def test_the_same_application_runs_where_it_owns_its_pkru() -> None:
    kernel = Kernel(Machine(), ipc="sel4")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"])
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    app = kernel.spawn(
        build_program(guest_root() / "attacks" / "pku_own_keys.c", base=0x0C00_0000),
        ["pku_own_keys"],
    )
    kernel.run(until=lambda: not app.running)
    assert app.exit_status == 0, bytes(app.console).decode()


@pytest.fixture(scope="module")
def reports() -> dict[int, drawbacks.DrawbackReport]:
    return {n: drawbacks.measure(n) for n in (1, 2)}


def test_mapping_costs_grow_with_the_applications(reports) -> None:
    one, two = reports[1], reports[2]
    # Every shared entry is one entry per joined application.
    assert one.place_server.pte_writes > 1000  # ramdisk's image and stack
    assert two.place_server.pte_writes == 2 * one.place_server.pte_writes
    assert (one.heap_grow.pte_writes, two.heap_grow.pte_writes) == (1, 2)
    assert two.connection.pte_writes == 2 * one.connection.pte_writes > 0
    # Joining costs the same for every application: echo's entries, and a scan.
    assert one.join == two.join
    assert one.join.pte_writes > 0 and one.join.scanned_bytes > 0


def test_keys_and_address_space_left_to_applications(reports) -> None:
    one, two = reports[1], reports[2]
    assert one.app_own_keys == 0
    assert two.keys_free == one.keys_free - 1  # each application's connection takes one
    assert one.app_map_window[0] == 1 << 31  # its memory objects go above the windows
    assert "refused: -1" in one.refused


def test_a_server_fault_in_an_applications_call_ends_the_server_not_the_application() -> None:
    kernel = Kernel(Machine(), ipc="pku-shared")
    attacks = guest_root() / "attacks"
    server = kernel.spawn(
        build_program(attacks / "faulty_server.c", base=ECHO_BASE),
        ["faulty_server", "0x10"],
        in_kernel=True,
    )
    kernel.run(until=lambda: "attacker" in kernel.services)
    victim = kernel.spawn(
        build_program(attacks / "victim_client.c", base=0x0A00_0000), ["victim_client", "call"]
    )
    kernel.run(until=lambda: not server.running and "victim" in bytes(victim.console).decode())
    assert server.state is GroupState.FAULTED and server.fault is not None
    assert server.fault.address == 0x10 and server.fault.cpl == 3
    assert victim.running  # its call returned -EPIPE on its own thread, its stack read back
    assert "victim: call = -32" in bytes(victim.console).decode()
