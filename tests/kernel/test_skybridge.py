"""SkyBridge's own mechanisms under attack: calling keys, the return check, the stray-
vmfunc scan, and a fault inside a nested call (kernel/ipc/skybridge.py).

Each guest (guest/attacks/sky_*.c, the programs of the red team's skybridge rows, and
tests/guests/relay*.c) states its attack and the expected response; every one would
succeed on a trampoline (or kernel) without the check it exercises. The red-team rows
check what the programs print; these tests check the kernel state behind it (EPTP
switches, bindings).
"""

from __future__ import annotations

from pathlib import Path

from underbridge.bench.ipc import ECHO_BASE
from underbridge.bridge.scan import vmfunc_sites
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"
ATTACKS = guest_root() / "attacks"
SERVER_BASE, RELAY_BASE, CLIENT_BASE = 0x0300_0000, 0x0400_0000, 0x40_0000


def kernel_with(server: Path | str, base: int, argv: list[str], service: str) -> Kernel:
    kernel = Kernel(Machine(), ipc="skybridge")
    kernel.spawn(build_program(server, base=base), argv, name=argv[0])
    kernel.run(until=lambda: service in kernel.services)
    return kernel


def run_client(kernel: Kernel, source: Path, argv: list[str]):
    client = kernel.spawn(build_program(source, base=CLIENT_BASE), argv, name=argv[0])
    kernel.run(until=lambda: not client.running)
    return client, bytes(client.console).decode().splitlines()


def test_a_call_without_the_calling_key_is_refused_and_echo_never_runs():
    kernel = kernel_with("echo", ECHO_BASE, ["echo"], "echo")
    switches = kernel.machine.eptp.switches
    client, lines = run_client(kernel, ATTACKS / "sky_nokey.c", ["sky_nokey"])
    assert client.state is GroupState.EXITED and client.exit_status == 0
    # refused: into echo's view and straight back (2 switches), then a genuine call (2)
    assert lines == ["observed: nokey = -1 buffer = abc", "observed: call = 0 mr1 = 8"]
    assert kernel.machine.eptp.switches - switches == 4
    assert kernel.services["echo"].server.running


def test_a_return_with_a_forged_key_gives_the_caller_eperm_and_no_reply():
    kernel = kernel_with(ATTACKS / "sky_forger.c", SERVER_BASE, ["sky_forger"], "forger")
    client, lines = run_client(kernel, ATTACKS / "sky_caller.c", ["sky_caller", "forger"])
    assert client.state is GroupState.EXITED and client.exit_status == 0
    assert lines == ["observed: call = -1 mr0 = 0"]  # not the forged 0x666


def test_a_genuine_call_returns_through_the_trampoline():
    kernel = kernel_with("echo", ECHO_BASE, ["echo"], "echo")
    _client, lines = run_client(kernel, ATTACKS / "sky_caller.c", ["sky_caller", "echo"])
    assert lines[0].startswith("observed: call = 0 mr0 = ")
    # the client has ended, and its EPTP index with it; echo keeps its own
    assert list(kernel.ipc.bindings.ids) == [kernel.services["echo"].server]


def test_a_stray_vmfunc_in_a_client_is_found_and_the_binding_refused():
    elf = build_program(ATTACKS / "sky_stray.c", base=CLIENT_BASE)
    assert vmfunc_sites(elf.read_bytes())  # hidden in `mov eax, 0xd4010f`
    kernel = kernel_with("echo", ECHO_BASE, ["echo"], "echo")
    client, lines = run_client(kernel, ATTACKS / "sky_stray.c", ["sky_stray"])
    assert lines == ["observed: connect = -1 gate = 0"]
    assert client.exit_status == 0
    assert kernel.ipc.bindings.ids == {}  # nothing was bound


def test_a_fault_in_a_nested_call_ends_the_innermost_server_and_the_relay_goes_on():
    kernel = kernel_with(
        ATTACKS / "faulty_server.c",
        SERVER_BASE,
        ["faulty_server", "0x10"],
        "attacker",
    )
    relay = kernel.spawn(
        build_program(GUESTS / "relay.c", base=RELAY_BASE), ["relay", "attacker"], name="relay"
    )
    kernel.run(until=lambda: "relay" in kernel.services)
    client, lines = run_client(kernel, GUESTS / "relay_client.c", ["relay_client", "2"])
    faulty = next(g for g in kernel.groups.values() if g.name == "faulty_server")
    assert faulty.state is GroupState.FAULTED and faulty.fault.address == 0x10
    assert relay.running and client.exit_status == 0
    # the relay's first call returned -EPIPE (unwound); its second finds the tombstone
    assert lines == ["call = 0 mr0 = -32", "call = 0 mr0 = -32"]


def test_bench_ipc_json_gives_both_paths_through_the_trampoline():
    import json

    from click.testing import CliRunner

    from underbridge.cli import main

    out = CliRunner().invoke(
        main, ["bench", "ipc", "--mode", "skybridge", "--rounds", "50", "--json"]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert [r["path"] for r in report["results"]] == ["app-server", "server-server"]
    for row in report["results"]:
        assert row["events_per_rtt"] == {"vmfunc": 2}
        # 2 x 134 + 100 instructions, plus the loop's marks spread over 50 rounds
        assert 368 <= row["sim_cycles_per_rtt"] < 369
