"""The placement engine on a live kernel (kernel/placement/engine.py): when a key is
wanted and none is left, the policy moves a server out to make room, or the newcomer
runs in user space; either way nothing fails."""

from __future__ import annotations

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.placement import policy_named
from underbridge.kernel.placement.engine import PlacementEngine
from underbridge.machine.cpu import Machine


def kernel_with_echoes(count: int, policy: str | None) -> tuple[Kernel, list]:
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    if policy is not None:
        PlacementEngine(kernel, policy_named(policy))
    echoes = []
    for index in range(count):
        name = f"s{index:02d}"
        elf = build_program("echo", base=REGION_SIZE * (index + 1))
        echoes.append(kernel.spawn(elf, ["echo", name], name=name, in_kernel=True))
    kernel.run(until=lambda: all(g.name in kernel.services for g in echoes))
    return kernel, echoes


def test_lru_moves_the_least_recent_server_out_for_a_new_one():
    kernel, echoes = kernel_with_echoes(15, "lru")
    assert kernel.ipc.keys.available == 0
    late = kernel.spawn(
        build_program("echo", base=REGION_SIZE * 20), ["echo", "late"], name="late", in_kernel=True
    )
    assert kernel.placement.domain_of(late) is not None and late.placement_note == ""
    assert kernel.placement.domain_of(echoes[0]) is None  # s00: never called, first by name
    (moved,) = kernel.migrations
    assert (moved.group, moved.direction, moved.state) == ("s00", "out", "done")
    assert moved.reason == "lru: making room, late is spawned in kernel space"
    app = kernel.spawn(build_program("pingpong", base=0x40_0000), ["pingpong", "5", "s00"])
    kernel.run(until=lambda: not app.running)
    assert app.exit_status == 0  # the server moved out still serves


def test_static_keeps_its_servers_and_the_newcomer_runs_in_user_space():
    kernel, echoes = kernel_with_echoes(15, "static")
    late = kernel.spawn(
        build_program("echo", base=REGION_SIZE * 20), ["echo", "late"], name="late", in_kernel=True
    )
    assert kernel.placement.domain_of(late) is None and kernel.migrations == []
    assert late.placement_note.startswith("late runs in user space: no protection key left")
    assert all(kernel.placement.domain_of(g) is not None for g in echoes)


def run_relay(kernel: Kernel):
    relay = kernel.spawn(
        build_program("pingpong", base=REGION_SIZE * 20),
        ["pingpong", "5", "s13", "--as-server"],
        in_kernel=True,
    )
    assert kernel.placement.domain_of(relay) is not None
    kernel.run(until=lambda: not relay.running)
    return relay


def test_a_new_server_pair_gets_its_key_by_moving_an_idle_server_out():
    kernel, _echoes = kernel_with_echoes(14, "lru")  # 14 keys, and the relay's: 15
    relay = run_relay(kernel)
    assert relay.exit_status == 0, bytes(relay.console)
    (moved,) = kernel.migrations
    assert (moved.group, moved.direction, moved.state) == ("s00", "out", "done")
    assert moved.reason == "lru: making room, a connection from pingpong to s13"


def test_without_a_policy_a_new_server_pair_with_no_key_is_enokey():
    kernel, _echoes = kernel_with_echoes(14, None)
    relay = run_relay(kernel)
    assert relay.exit_status == 1 and b"-126" in bytes(relay.console)  # -ENOKEY, told


def test_a_move_in_that_needs_more_keys_than_are_left_is_refused_up_front():
    """Moving in a server connected to an in-kernel one takes two keys (its domain and
    their pair's); with one left it is refused before anything changes."""
    from underbridge.kernel.ipc.migrate import region_stack_top

    kernel, echoes = kernel_with_echoes(14, None)
    base = REGION_SIZE * 20
    relay = kernel.spawn(
        build_program("pingpong", base=base),
        ["pingpong", "100000000", "s00", "--as-server"],
        stack_top=region_stack_top(base),
    )
    kernel.run(until=lambda: any(c.client is relay for c in kernel.services["s00"].connections))
    assert kernel.ipc.keys.available == 1
    migration = kernel.migrate(relay, to_kernel=True, reason="test")
    assert migration.state == "refused"
    assert migration.report == (
        "no protection key left for pingpong: it needs 2 (its domain and one per "
        "in-kernel server it is connected to), 1 free"
    )
    assert kernel.ipc.keys.available == 1 and kernel.placement.domain_of(relay) is None
    kernel.kill(echoes[5])  # a key comes back: now it moves in
    assert kernel.migrate(relay, to_kernel=True, reason="test").state in ("done", "pending")
