"""Regression: one application took every protection key by opening connections (issue 14).

Under underbridge every connection to an in-kernel server got a shared key of its own.
Tried as an attacker: one ring-3 application opening 14 connections to the in-kernel
echo server took every free key, after which no other application could connect
(-ENOKEY), no server could be placed in kernel space, and Kernel.spawn let the error
escape. Fixed by the key economy (kernel/ipc/gate_table.py): an application's
connection uses the server's own key (its buffer is in the application's own page
table), connections between the same two in-kernel servers share one key, and a
server spawned with no key left runs in user space with a note saying why.
"""

from __future__ import annotations

import pytest

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine
from underbridge.machine.pkru import access_disabled

# Opens N connections to echo, calls each once, then holds them all until it is killed.
HOARDER = r"""
#include "ub.h"
#include "ub_ipc.h"
#include "ub_sys.h"
#include "echo_proto.h"
static struct ub_conn conns[64];
int main(int argc, char **argv)
{
    long n = argc > 1 ? ub_parse_count(argv[1]) : 0;
    if (n < 1 || n > 64)
        return 2;
    for (long i = 0; i < n; i++) {
        long r = ub_ipc_connect("echo", &conns[i]);
        if (r < 0) {
            ub_printf("hoarder: connection %ld: %ld\n", i, r);
            return 1;
        }
        long mr[4] = {ECHO_REGS, i, 0, 0};
        if (ub_ipc_call(&conns[i], mr) < 0 || mr[1] != i)
            return 1;
    }
    ub_printf("hoarder: %ld connections held\n", n);
    for (;;)
        ub_yield();
}
"""


@pytest.fixture(scope="module")
def hoarder_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("hoarder") / "hoarder.c"
    source.write_text(HOARDER)
    return source


def start(kernel: Kernel, elf: bytes, count: int, *, in_kernel: bool = False):
    group = kernel.spawn(elf, ["hoarder", str(count)], in_kernel=in_kernel)
    kernel.run(until=lambda: b"held" in group.console or not group.running)
    assert bytes(group.console) == f"hoarder: {count} connections held\n".encode()
    return group


def test_an_application_with_40_connections_takes_no_key(hoarder_source):
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    start(kernel, build_program(hoarder_source, base=0x40_0000), 40)
    assert kernel.ipc.keys.available == 14  # echo's own key, nothing more
    echo_key = kernel.placement.domain_of(echo).key
    assert {gate.shared_key for gate in kernel.ipc.gates()} == {echo_key}
    # Another application still connects and calls ...
    app = kernel.spawn(build_program("pingpong", base=0x40_0000), ["pingpong", "20", "echo"])
    # ... and a server is still placed in kernel space, with one key for its calls to echo.
    relay = kernel.spawn(
        build_program("pingpong", base=PINGPONG_BASE),
        ["pingpong", "20", "echo", "--as-server"],
        in_kernel=True,
    )
    assert kernel.placement.domain_of(relay) is not None and relay.placement_note == ""
    kernel.run(until=lambda: not app.running and not relay.running)
    assert app.exit_status == 0 and relay.exit_status == 0
    assert bytes(relay.console).endswith(b"pingpong: 20 rounds ok\n")
    assert kernel.ipc.keys.available == 14  # the relay's keys came back when it ended


def test_connections_between_two_in_kernel_servers_share_one_key(hoarder_source):
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    hoarder = start(kernel, build_program(hoarder_source, base=REGION_SIZE * 8), 20, in_kernel=True)
    assert kernel.ipc.keys.available == 12  # echo's, the hoarder's, and their pair's
    keys = {gate.shared_key for gate in kernel.ipc.gates()}
    assert len(keys) == 1
    (pair_key,) = keys
    placement = kernel.placement
    openers = {
        group
        for group in placement.placed_groups()
        if not access_disabled(placement.domain_of(group).pkru, pair_key)
    }
    assert openers == {echo, hoarder}  # exactly the two parties (rule 5)
    kernel.kill(hoarder)
    assert kernel.ipc.keys.available == 14 and not list(kernel.ipc.gates())
    assert not access_disabled(placement.domain_of(echo).pkru, placement.domain_of(echo).key)
    assert access_disabled(placement.domain_of(echo).pkru, pair_key)  # closed again


def test_servers_past_the_15th_key_run_in_user_space_and_still_serve(hoarder_source):
    """14 in-kernel servers and echo take every key; one more is spawned in user space
    with a note, and connects to echo (the kernel IPC path) like any application."""
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"], in_kernel=True)
    kernel.run(until=lambda: "echo" in kernel.services)
    hello = [
        kernel.spawn(build_program("hello", base=REGION_SIZE * (index + 8)), in_kernel=True)
        for index in range(14)
    ]
    assert kernel.ipc.keys.available == 0 and all(g.placement_note == "" for g in hello)
    late = start(kernel, build_program(hoarder_source, base=REGION_SIZE * 30), 3, in_kernel=True)
    assert kernel.placement.domain_of(late) is None
    assert late.placement_note.startswith("hoarder runs in user space: no protection key left")
    assert late.threads[0].context.cpl == 3
