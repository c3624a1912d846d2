"""The supervisor (kernel/supervisor.py): a killed server comes back, its clients reconnect.

Every design, both paths (an application client, and a server client: in kernel space
under the designs that place servers there): echo runs under supervision, a client
(tests/guests/retry_client.c) makes retriable calls through ub_ipc_call_retry, and the
supervisor kills echo at a simulated instant in the middle of them. The client must
see no error at all: one call reconnects and is sent again, and every reply is right
(except under `monolithic`, which contains nothing: an in-kernel client inside the
killed server's handler ends with it, as its docstring says).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.kernel.supervisor import Policy, Supervisor
from underbridge.machine.cpu import Machine
from underbridge.machine.oracle import Access, Violation

GUESTS = Path(__file__).parent.parent / "guests"
ECHO_BASE, CLIENT_BASE = 0x0100_0000, 0x0200_0000
CALLS = 1000
KILL_AFTER = 30_000  # simulated cycles after the client starts: inside its calls


def supervised_echo(mode: str, policy: Policy | None = None):
    kernel = Kernel(Machine(), ipc=mode)
    supervisor = Supervisor(kernel)
    in_kernel = kernel.ipc.traits.servers_in_kernel
    supervisor.start(
        build_program("echo", base=ECHO_BASE),
        ["echo"],
        service="echo",
        in_kernel=in_kernel,
        policy=policy,
    )
    kernel.run(until=lambda: "echo" in kernel.services)
    return kernel, supervisor


def client(kernel: Kernel, calls: int, *, as_server: bool):
    in_kernel = kernel.ipc.traits.servers_in_kernel and as_server
    args = ["retry_client", str(calls), "echo"] + (["--as-server"] if as_server else [])
    elf = build_program(GUESTS / "retry_client.c", base=CLIENT_BASE)
    return kernel.spawn(elf, args, in_kernel=in_kernel)


def reconnects(group) -> list[tuple[int, int, int, int]]:
    """(call, status, reply mr1, clock) for each call that failed or reconnected."""
    rows = []
    for line in bytes(group.console).decode().splitlines():
        words = line.split()
        rows.append((int(words[1]), int(words[3]), int(words[4]), int(words[6])))
    return rows


@pytest.mark.parametrize("path", ["app-server", "server-server"])
@pytest.mark.parametrize("mode", DESIGNS)
def test_a_killed_server_is_restarted_in_place_and_its_client_carries_on(mode, path):
    kernel, supervisor = supervised_echo(mode)
    old = supervisor.group("echo")
    was_placed = kernel.placement.domain_of(old) is not None
    app = client(kernel, CALLS, as_server=path == "server-server")
    kill_at = kernel.machine.clock() + KILL_AFTER
    supervisor.kill_at("echo", kill_at)
    kernel.run(until=lambda: not app.running)

    if (mode, path) == ("monolithic", "server-server"):
        # No containment, by design (kernel/ipc/monolithic.py, Faults): the client was
        # inside echo's handler, nothing recorded its call, and it resumes in unmapped code.
        assert app.state is GroupState.FAULTED and app.fault.access is Access.FETCH
        assert app.fault.reason is Violation.NOT_PRESENT
        return
    assert app.state is GroupState.EXITED and app.exit_status == 0, bytes(app.console)
    [(call, status, reply, clock)] = reconnects(app)
    assert 0 < call < CALLS and status == 0 and reply == call  # sent again, answered right
    [restart] = supervisor.restarts
    new = supervisor.group("echo")
    assert (restart.name, restart.attempt, restart.old_pid, restart.new_pid) == (
        "echo",
        1,
        old.pid,
        new.pid,
    )
    assert restart.ending == "exited -9" and not restart.gave_up
    assert kill_at <= restart.died_at < restart.due_at <= restart.started_at
    assert restart.due_at - restart.died_at == Policy().backoff
    assert restart.started_at < restart.serving_at < clock  # serving again, then the reply
    assert (kernel.placement.domain_of(new) is not None) == was_placed  # the same placement
    assert kernel.services["echo"].server is new and new.running


def test_the_backoff_doubles_and_the_limit_holds():
    kernel, supervisor = supervised_echo("sel4", Policy(limit=2, backoff=1000))
    for _ in range(3):
        supervisor.kill_now("echo")
        kernel.run(until=lambda: "echo" in kernel.services)
    first, second, third = supervisor.restarts
    assert [r.due_at - r.died_at for r in (first, second, third)] == [1000, 2000, 4000]
    assert first.new_pid and second.new_pid and third.new_pid is None
    assert third.gave_up == "restart limit 2 reached"
    assert "echo" not in kernel.services and not supervisor.group("echo").running


def test_a_clean_exit_and_a_stop_are_not_restarted():
    kernel, supervisor = supervised_echo("sel4")
    supervisor.stop("echo")
    kernel.run()
    assert supervisor.restarts == [] and "echo" not in kernel.services
    hello = supervisor.start(build_program("hello", base=CLIENT_BASE), ["hello"], service="hello")
    kernel.run()
    assert hello.state is GroupState.EXITED and hello.exit_status == 0
    assert supervisor.restarts == [] and supervisor.group("hello") is hello


def test_a_crash_while_the_cpu_is_idle_restarts_at_once():
    kernel, supervisor = supervised_echo("underbridge")
    supervisor.kill_now("echo")  # nothing else runs: the restart need not wait
    kernel.run()
    [restart] = supervisor.restarts
    assert restart.new_pid == supervisor.group("echo").pid
    assert "echo" in kernel.services


def test_bad_requests_are_one_line_errors():
    kernel, supervisor = supervised_echo("sel4")
    with pytest.raises(UserError, match="no supervised server named 'nope'"):
        supervisor.kill_now("nope")
    with pytest.raises(UserError, match="already supervised"):
        supervisor.start(build_program("echo", base=ECHO_BASE), ["echo"], service="echo")
    with pytest.raises(UserError, match="already has a supervisor"):
        Supervisor(kernel)


def test_a_server_that_migrated_is_restarted_where_it_is_now(tmp_path):
    """echo starts in user space (migratable), moves into kernel space, is killed: the
    supervisor starts it again in kernel space, and a trace marks both events."""
    from tests.kernel.test_trace import traced
    from underbridge.kernel.ipc.migrate import region_stack_top

    seen = {}

    def run() -> None:
        kernel = Kernel(Machine(), ipc="underbridge")
        supervisor = Supervisor(kernel)
        supervisor.start(
            build_program("echo", base=ECHO_BASE),
            ["echo"],
            service="echo",
            in_kernel=False,
            policy=Policy(backoff=1),
            stack_top=region_stack_top(ECHO_BASE),
        )
        kernel.run(until=lambda: "echo" in kernel.services)
        echo = supervisor.group("echo")
        moved = kernel.migrate(echo, to_kernel=True)
        kernel.run(until=lambda: moved.state != "pending")
        assert moved.state == "done"
        app = client(kernel, CALLS, as_server=False)
        supervisor.kill_at("echo", kernel.machine.clock() + KILL_AFTER)
        kernel.run(until=lambda: not app.running)
        assert app.state is GroupState.EXITED and app.exit_status == 0
        assert len(supervisor.restarts) == 1
        seen["placed"] = kernel.placement.domain_of(supervisor.group("echo")) is not None

    doc, _session = traced(run, tmp_path)
    assert seen["placed"]
    marks = [
        (e["name"], e["args"]["to"]) for e in doc["traceEvents"] if e.get("cat") == "lifecycle"
    ]
    assert marks == [("migrate echo", "kernel space"), ("restart echo", "kernel space")]
