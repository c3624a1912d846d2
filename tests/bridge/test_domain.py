"""Protection keys and the isolation rules of bridge/domain.py, checked on real tables."""

from __future__ import annotations

import pytest

from underbridge.abi.syscalls import Errno
from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.bridge.domain import KeyAllocator, kernel_call_pkru
from underbridge.errors import SyscallError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import CURRENT_THREAD_PAGE, REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags
from underbridge.machine.pkru import access_disabled, write_disabled


def test_keys_are_1_to_15_and_exhaustion_is_a_clear_error():
    keys = KeyAllocator()
    taken = [keys.allocate(f"server{i}") for i in range(15)]
    assert sorted(taken) == list(range(1, 16))
    with pytest.raises(SyscallError) as error:
        keys.allocate("one too many")
    assert error.value.errno == Errno.ENOKEY and "one too many" in str(error.value)
    keys.release(7)
    assert keys.allocate("again") == 7


def test_kernel_call_pkru_opens_key_0_and_the_buffer_only():
    pkru = kernel_call_pkru(9)
    assert not access_disabled(pkru, 0) and not write_disabled(pkru, 9)
    assert all(access_disabled(pkru, k) for k in range(16) if k not in (0, 9))


@pytest.fixture(scope="module")
def system():
    """echo in the kernel, pingpong in the kernel (connected), and an application."""
    machine = Machine(accounting=False)
    kernel = Kernel(machine, ipc="underbridge")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    relay = kernel.spawn(
        build_program("pingpong", base=PINGPONG_BASE),
        ["pingpong", "5", "echo", "--as-server"],
        in_kernel=True,
    )
    app = kernel.spawn(build_program("pingpong", base=PINGPONG_BASE), ["pingpong", "5", "echo"])
    kernel.run(until=lambda: not relay.running and not app.running)
    assert relay.exit_status == 0 and app.exit_status == 0
    relay2 = kernel.spawn(
        build_program("pingpong", base=PINGPONG_BASE),
        ["pingpong", "100000000", "echo", "--as-server"],
        in_kernel=True,
    )
    kernel.run(
        until=lambda: any(
            g.client is not None and g.client.group is relay2 for g in kernel.ipc.gates()
        )
    )
    return kernel, echo, relay2


def test_every_page_of_the_kernel_page_table_is_user_and_keyed(system):
    """Rule 2: no U=0 page for a ring-0 server to reach around PKRU, but the read-only
    current-thread word."""
    kernel, _echo, _relay = system
    supervisor = [
        (vaddr, mapping.flags)
        for vaddr, mapping in kernel.machine.kernel_space.mappings()
        if not mapping.flags.user
    ]
    assert supervisor == [(CURRENT_THREAD_PAGE, PageFlags())]  # not writable, not executable


def test_the_current_thread_word_names_the_thread_ring_0_code_runs_on(system):
    kernel, _echo, relay = system
    frame = kernel.machine.kernel_space.translate(CURRENT_THREAD_PAGE)
    assert kernel.machine.mem.read_u64(frame) == relay.threads[0].tid


def test_each_server_region_carries_its_own_key_only(system):
    """Rule 4: a server's pages carry its key; nobody else's PKRU opens it."""
    kernel, echo, relay = system
    ipc = kernel.ipc
    for group, base in ((echo, ECHO_BASE), (relay, PINGPONG_BASE)):
        key = ipc.domain_of(group).key
        region = [
            m for va, m in kernel.machine.kernel_space.mappings() if base <= va < base + REGION_SIZE
        ]
        assert region and all(m.flags.pkey == key for m in region)
        for other in ipc.placed_groups():
            if other is not group:
                assert access_disabled(ipc.domain_of(other).pkru, key)


def test_key_0_is_closed_to_every_server_and_gates_are_not_writable(system):
    """Rule 3."""
    kernel, _echo, _relay = system
    for group in kernel.placement.placed_groups():
        assert access_disabled(kernel.placement.domain_of(group).pkru, 0)
    for gate in kernel.ipc.gates():
        mapping = kernel.machine.kernel_space.lookup(gate.address)
        assert mapping.flags.pkey == 0 and mapping.flags.executable
        assert not mapping.flags.writable


def test_shared_keys_are_opened_by_exactly_the_two_parties(system):
    """Rule 5."""
    kernel, echo, relay = system
    gate = next(g for g in kernel.ipc.gates() if g.client is not None and g.client.group is relay)
    openers = [
        group
        for group in kernel.placement.placed_groups()
        if not access_disabled(kernel.placement.domain_of(group).pkru, gate.shared_key)
    ]
    assert set(openers) == {echo, relay}
    buffer = kernel.machine.kernel_space.lookup(gate.conn.buffer_vaddr)
    assert buffer.flags.pkey == gate.shared_key


def test_application_page_tables_map_nothing_of_the_kernel_or_servers(system):
    """Rule 1."""
    kernel, _echo, _relay = system
    for group in kernel.groups.values():
        if kernel.placement.domain_of(group) is not None or not group.running:
            continue
        for vaddr, _mapping in group.vmspace.table.mappings():
            assert not ECHO_BASE <= vaddr < ECHO_BASE + REGION_SIZE
            assert (
                kernel.machine.kernel_space.lookup(vaddr) is None or vaddr >= 0x5000_0000_0000
            )  # only shared IPC buffers coincide


def test_ending_everything_returns_every_frame_page_and_key():
    machine = Machine(accounting=False)
    kernel = Kernel(machine, ipc="underbridge")
    echo_elf = build_program("echo", base=ECHO_BASE)
    pingpong_elf = build_program("pingpong", base=PINGPONG_BASE)
    kernel.spawn(echo_elf, ["echo"], in_kernel=True)  # maps the kernel's gate-call pages
    kernel.run(until=lambda: "echo" in kernel.services)
    kernel.spawn(pingpong_elf, ["pingpong", "1", "echo"])
    warm = kernel.spawn(pingpong_elf, ["pingpong", "1", "echo", "--as-server"], in_kernel=True)
    kernel.run(until=lambda: not warm.running)  # page-table levels of its region stay
    frames, pages = machine.frames.free_frames, len(list(machine.kernel_space.mappings()))
    keys = kernel.ipc.keys.available
    for _ in range(3):  # in-kernel and application clients come and go
        relay = kernel.spawn(pingpong_elf, ["pingpong", "5", "echo", "--as-server"], in_kernel=True)
        app = kernel.spawn(pingpong_elf, ["pingpong", "5", "echo"])
        kernel.run(until=lambda r=relay, a=app: not r.running and not a.running)
        assert relay.exit_status == 0 and app.exit_status == 0
    assert machine.frames.free_frames == frames
    assert len(list(machine.kernel_space.mappings())) == pages
    assert kernel.ipc.keys.available == keys


def test_spawning_a_server_with_no_key_left_runs_it_in_user_space(hello_elf):
    machine = Machine(accounting=False)
    kernel = Kernel(machine, ipc="underbridge")
    hoard = [kernel.ipc.keys.allocate(f"placeholder {i}") for i in range(15)]
    hello = kernel.spawn(build_program("hello", base=0x0300_0000), ["hello"], in_kernel=True)
    assert "move a server to user space" in hello.placement_note
    kernel.run()
    assert hello.exit_status == 0 and bytes(hello.console).startswith(b"Hello from ring 3")
    kernel.ipc.keys.release(hoard[0])
    hello = kernel.spawn(build_program("hello", base=0x0300_0000), ["hello"], in_kernel=True)
    kernel.run()
    assert hello.exit_status == 0 and bytes(hello.console).startswith(b"Hello from ring 0")


def test_designs_without_domains_refuse_in_kernel_placement(hello_elf):
    from underbridge.errors import UserError

    kernel = Kernel(Machine(accounting=False), ipc="sel4")
    with pytest.raises(UserError, match="--mode underbridge"):
        kernel.spawn(hello_elf, ["hello"], in_kernel=True)
    assert not kernel.groups


def test_a_hidden_wrpkru_is_refused_as_built_and_admitted_once_rewritten(tmp_path):
    """Rule 7 rests on this: no in-kernel server may hold a wrpkru, even a hidden one."""
    from underbridge.errors import UserError

    source = tmp_path / "sneaky.c"
    source.write_text(
        '#include "ub.h"\nint main(void) {\n'
        '  __asm__ volatile("mov $0x90ef010f, %%eax" ::: "eax");\n'
        "  return 0; }\n"
    )
    elf = build_program(source, base=0x0300_0000)
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    keys = kernel.ipc.keys.available
    with pytest.raises(UserError, match="can change PKRU"):
        kernel.spawn(elf, ["sneaky"], in_kernel=True, rewrite=False)
    assert not kernel.groups and kernel.ipc.keys.available == keys
    sneaky = kernel.spawn(elf, ["sneaky"], in_kernel=True)  # the loader rewrites it
    assert kernel.placement.domain_of(sneaky) is not None and sneaky.threads[0].context.cpl == 0
    kernel.run()
    assert sneaky.exit_status == 0


def test_an_unsafe_server_can_be_sent_to_user_space_instead(tmp_path):
    source = tmp_path / "sneaky.c"
    source.write_text(
        '#include "ub.h"\nint main(void) {\n'
        '  __asm__ volatile("wrpkru" :: "a"(0), "c"(0), "d"(0));\n'
        "  return 0; }\n"
    )
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    group = kernel.spawn(
        build_program(source, base=0x0300_0000), ["sneaky"], in_kernel=True, if_unsafe="user"
    )
    assert kernel.placement.domain_of(group) is None and group.threads[0].context.cpl == 3
    kernel.run()
    assert group.exit_status == 0  # in ring 3, wrpkru only touches its own (keyless) pages
