"""Zircon-style channels and ports: the native syscalls, and the zircon IPC design.

tests/guests/chantest.c uses channels directly from two processes (handle transfer, a
channel_call answered out of order, a port, peer closed); the object-level tests pin
down the state machine of kernel/objects/channel.py; the last ones run the unchanged
IPC binaries under --mode zircon, where every connection is a channel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.guestbuild.toolchain import build_program, guest_root
from underbridge.kernel.cap import Cap
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.objects.channel import (
    PEER_CLOSED,
    PORT_GONE,
    READABLE,
    ChannelMessage,
    Port,
    channel_pair,
)
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine

GUESTS = Path(__file__).parent.parent / "guests"
CHANTEST_BASE = 0x0300_0000

PARENT = [
    "parent: write own endpoint = -22",  # EINVAL: a channel cannot carry its own endpoint
    "parent: read empty = -11",  # EAGAIN
    "parent: write with handle = 0, sent slot now -77",  # the handle left: EBADCAP
    "parent: wait 1, read 35 bytes 'hello through a transferred handle'",
    "parent: call 12 bytes, sum 5",  # the reply with the call's txid, not the decoy
    "parent: then read 12 bytes, txid 4660",  # the decoy (0x1234) stayed queued
    "parent: child exited 0; a 2, x 2",  # PEER_CLOSED: deleted cap, and the ended holder
    "parent: write -32, read -32, call -32",  # EPIPE
]
CHILD = [
    "child: wait 1, read 10 bytes 'take this', 1 handle(s), type 7",  # a CHANNEL cap
    "child: write on it = 0",
    "child: port 0 key 42 signals 1, call 12 bytes: 2 + 3, txid has top bit 1",
]


@pytest.mark.parametrize("mode", ["sel4", "zircon"])
def test_two_processes_talk_over_channels_and_pass_a_handle(mode):
    kernel = Kernel(Machine(), ipc=mode)
    kernel.register_program("chantest", build_program(GUESTS / "chantest.c", base=CHANTEST_BASE))
    parent = kernel.spawn("chantest")
    kernel.run()
    parent_group, child = kernel.groups.values()
    assert parent_group is parent
    for group, expected in ((parent, PARENT), (child, CHILD)):
        assert (group.state, group.exit_status) == (GroupState.EXITED, 0)
        assert bytes(group.console).decode().splitlines() == expected
    assert kernel.blocked() == []


# -- the state machine -----------------------------------------------------------------


def test_a_reply_with_the_calls_txid_goes_to_the_caller_and_others_queue():
    client, server = channel_pair()
    got = []
    client.calls[0x8000_0001] = got.append
    server.write(ChannelMessage((0x1234).to_bytes(4, "little") + b"decoy"))
    server.write(ChannelMessage((0x8000_0001).to_bytes(4, "little") + b"reply"))
    assert [m.data[4:] for m in got] == [b"reply"]
    assert [m.data[4:] for m in client.queue] == [b"decoy"] and client.calls == {}


def test_closing_either_endpoint_fails_the_calls_waiting_on_it():
    for close_server in (True, False):
        client, server = channel_pair()
        got = []
        client.calls[client.new_txid()] = got.append
        (server if close_server else client).close()
        assert got == [None] and client.calls == {}
        assert client.peer is None and server.peer is None


def test_the_peer_sees_peer_closed_and_the_queue_survives_for_reading():
    a, b = channel_pair()
    seen = []
    b.observers.append(lambda _end, signals: seen.append(signals) or True)
    a.write(ChannelMessage(b"last words"))
    a.close()
    assert seen == [READABLE, READABLE | PEER_CLOSED]
    assert b.signals() == READABLE | PEER_CLOSED and b.queue[0].data == b"last words"


def test_discarded_messages_close_the_endpoints_they_carry():
    a, b = channel_pair()
    carried, kept = channel_pair()
    a.write(ChannelMessage(b"", (Cap(carried, 0),)))  # type: ignore[arg-type]
    b.close()  # nobody will read the message: its endpoint closes, the peer sees it
    assert not carried.alive and kept.signals() == PEER_CLOSED


def test_a_port_hands_each_packet_to_one_live_waiter_and_fails_them_when_destroyed():
    port = Port()
    got = []
    port.waiters.extend([lambda _k, _s: False, lambda k, s: got.append((k, s)) or True])
    port.queue(7, READABLE)  # the first waiter's thread is gone: the second takes it
    port.queue(8, READABLE)  # nobody waits: kept
    assert got == [(7, READABLE)] and list(port.packets) == [(8, READABLE)]
    port.waiters.append(lambda k, s: got.append((k, s)) or True)
    port.destroy()
    assert got[-1] == (None, PORT_GONE)


# -- the zircon design: the IPC binaries over channels -----------------------------------


def test_a_server_that_ends_mid_call_closes_the_channel_and_the_call_gets_epipe():
    """faulty_server registers and never receives: the call waits on the channel until
    the server is killed, which closes every channel of its service."""
    kernel = Kernel(Machine(), ipc="zircon")
    server = kernel.spawn(
        build_program(guest_root() / "attacks" / "faulty_server.c", base=0x0300_0000),
        ["faulty_server", hex(0x10)],
    )
    kernel.run(until=lambda: "attacker" in kernel.services)
    client = kernel.spawn(
        build_program(GUESTS / "relay_client.c", base=0x40_0000),
        ["relay_client", "2", "attacker"],
    )
    kernel.run()
    assert client.threads[0].waiting_on == "channel call to attacker"
    kernel.kill(server)
    kernel.run(until=lambda: not client.running)
    first, second = bytes(client.console).decode().splitlines()
    assert first == "call = -32 mr0 = 0"  # EPIPE
    assert second == "call = -32 mr0 = 0"  # a later call on the broken connection: EPIPE
    assert (client.state, client.exit_status) == (GroupState.EXITED, 0)


def test_echo_serves_many_clients_through_its_port_and_keeps_no_state_after():
    kernel = Kernel(Machine(), ipc="zircon")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"])
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    clients = [
        kernel.spawn(
            build_program("pingpong", base=PINGPONG_BASE + i * 0x10_0000), ["pingpong", "20"]
        )
        for i in range(3)
    ]
    kernel.run(until=lambda: not any(c.running for c in clients))
    for client in clients:
        assert bytes(client.console).decode() == "pingpong: 20 rounds ok\n"
    design = kernel.ipc
    assert design._channels == {} and design._connection_of == {}  # type: ignore[attr-defined]
