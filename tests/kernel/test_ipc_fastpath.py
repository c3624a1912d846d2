"""The IPC fast paths (issue 11): the same effects and counts as the slow path, or none.

Each design's `fastpath` takes IPC_CALL / IPC_REPLY_WAIT in its common case and must
leave exactly what dispatch plus `call`/`reply_wait` would: the same simulated cycles,
events and categories, the same replies. When a check fails it must change nothing and
return False, so the slow path names the error.
"""

from __future__ import annotations

import pytest

from tests.kernel.test_syscalls import Guest, err, register
from underbridge.abi.syscalls import Errno, Rights, Sys
from underbridge.bench import ipc as ipc_bench
from underbridge.bench.markers import MarkRecorder
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.dispatch import dispatch
from underbridge.kernel.ipc.sel4 import Sel4Ipc
from underbridge.kernel.ipc.underbridge import UnderbridgeIpc
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine

ROUNDS = 40


def _run_pingpong(mode: str, path: str) -> tuple[Kernel, list[bool]]:
    """bench/ipc.py's scenario, recording what every fastpath call returned."""
    machine = Machine()
    kernel = Kernel(machine, ipc=mode)
    taken: list[bool] = []
    fastpath = kernel.ipc.fastpath

    def recording(*args: object) -> bool:
        taken.append(fastpath(*args))  # type: ignore[arg-type]
        return taken[-1]

    kernel.ipc.fastpath = recording  # type: ignore[method-assign]
    in_kernel = kernel.ipc.traits.servers_in_kernel
    kernel.spawn(build_program("echo", base=ipc_bench.ECHO_BASE), ["echo"], in_kernel=in_kernel)
    args = ["pingpong", str(ROUNDS), "echo"] + (["--as-server"] if path == "server-server" else [])
    client = kernel.spawn(
        build_program("pingpong", base=ipc_bench.PINGPONG_BASE),
        args,
        in_kernel=in_kernel and path == "server-server",
    )
    recorder = MarkRecorder(kernel).watch(client)
    kernel.run(until=lambda: not client.running)
    assert client.exit_status == 0 and recorder.complete
    return kernel, taken


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        ("sel4", "app-server"),
        ("sel4", "server-server"),
        ("sel4-kpti", "app-server"),
        ("underbridge", "app-server"),
    ],
)
def test_fast_and_slow_paths_count_the_same(mode, path, monkeypatch):
    fast, taken = _run_pingpong(mode, path)
    # Every call of the loop, and every reply but the last wait, took the fast path.
    assert taken.count(True) >= ROUNDS * (1 if mode == "underbridge" else 2) - 1
    for design in (Sel4Ipc, UnderbridgeIpc):
        monkeypatch.setattr(design, "fastpath", lambda *_: False)
    slow, never = _run_pingpong(mode, path)
    assert not any(never)
    assert fast.machine.tally() == slow.machine.tally()
    assert [bytes(g.console) for g in fast.groups.values()] == [
        bytes(g.console) for g in slow.groups.values()
    ]


@pytest.fixture
def stage(hello_elf) -> tuple[Kernel, Guest, Guest]:
    """A kernel (accounting on: a refusal must not change the counts) with a server and
    a client, both `hello` cap groups whose main threads make syscalls from Python."""
    kernel = Kernel(Machine())
    return kernel, Guest(kernel, hello_elf, "server"), Guest(kernel, hello_elf, "client")


def _snapshot(kernel: Kernel, *guests: Guest) -> tuple[object, ...]:
    return (
        kernel.machine.tally(),
        kernel.sched.current,
        [(g.thread.state, g.thread.context.raw()) for g in guests],
    )


def _refused(kernel: Kernel, guest: Guest, number: Sys, *args: int) -> bool:
    before = _snapshot(kernel, guest)
    taken = kernel.ipc.fastpath(kernel, guest.thread, number, (*args, 0, 0, 0, 0, 0, 0)[:6])
    return not taken and _snapshot(kernel, guest) == before


def test_a_call_the_fast_path_refuses_changes_nothing(stage):
    kernel, server, client = stage
    service = register(server, b"echo")
    conn = client.sys(Sys.IPC_CONNECT, client.put(b"echo"), 4)
    weak = client.sys(Sys.CAP_COPY, conn, Rights.GRANT)
    kernel.sched.pick()
    kernel.sched.pick()
    assert _refused(kernel, client, Sys.IPC_CALL, 77, 1, 2, 3, 4)  # empty slot
    assert _refused(kernel, client, Sys.IPC_CALL, weak, 1, 2, 3, 4)  # no CALL right
    assert _refused(kernel, server, Sys.IPC_CALL, service, 1, 2, 3, 4)  # not a connection
    assert _refused(kernel, client, Sys.IPC_CALL, conn, 1, 2, 3, 4)  # no server waiting
    assert _refused(kernel, client, Sys.IPC_CONNECT, conn)  # not an IPC fast path number
    # What the slow path then says, for the same syscalls:
    assert dispatch(kernel, client.thread, Sys.IPC_CALL, (weak, 1, 2, 3, 4, 0)) == err(Errno.EPERM)


def test_a_reply_the_fast_path_refuses_changes_nothing(stage):
    kernel, server, client = stage
    service = register(server, b"echo")
    conn = client.sys(Sys.IPC_CONNECT, client.put(b"echo"), 4)
    kernel.sched.pick()
    assert _refused(kernel, server, Sys.IPC_REPLY_WAIT, service, 0, 0, 0, 0)  # no caller
    assert _refused(kernel, server, Sys.IPC_REPLY_WAIT, conn, 0, 0, 0, 0)  # not its service
    server.sys(Sys.IPC_REPLY_WAIT, service, 0, 0, 0, 0)  # waits (slow path)
    kernel.sched.pick()
    assert kernel.ipc.fastpath(kernel, client.thread, Sys.IPC_CALL, (conn, 5, 6, 7, 8, 0))
    assert kernel.sched.current is server.thread
    client.group.threads[0].mark_destroyed()  # the caller died during the call
    assert _refused(kernel, server, Sys.IPC_REPLY_WAIT, service, 1, 2, 3, 4)


def test_fast_reply_reaches_the_caller_and_the_server_waits(stage):
    kernel, server, client = stage
    service = register(server, b"echo")
    conn = client.sys(Sys.IPC_CONNECT, client.put(b"echo"), 4)
    kernel.sched.pick()
    server.sys(Sys.IPC_REPLY_WAIT, service, 0, 0, 0, 0)
    kernel.sched.pick()
    assert kernel.ipc.fastpath(kernel, client.thread, Sys.IPC_CALL, (conn, 5, 6, 7, 8, 0))
    assert [server.thread.context[r] for r in (Reg.RDX, Reg.R10, Reg.R8, Reg.R9)] == [5, 6, 7, 8]
    assert kernel.ipc.fastpath(
        kernel, server.thread, Sys.IPC_REPLY_WAIT, (service, 9, 10, 11, -1 % 2**64, 0)
    )
    got = [client.thread.context[r] for r in (Reg.RAX, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)]
    assert got == [0, 9, 10, 11, 2**64 - 1]
    assert kernel.sched.current is client.thread
    assert server.thread.state is ThreadState.BLOCKED
    assert list(kernel.services["echo"].receivers) == [server.thread]
