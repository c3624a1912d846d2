"""Regression: a restarted server that died again before it served had its restart
record marked as serving when a later instance registered (kernel/supervisor.py
`_note_serving` compared with the server's current group, not the one the record
started). Found in a `bench crash` run; each record must name the instance it started."""

from __future__ import annotations

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.supervisor import Policy, Supervisor
from underbridge.machine.cpu import Machine


def test_a_restart_whose_instance_never_served_is_not_marked_serving():
    kernel = Kernel(Machine(), ipc="sel4")
    supervisor = Supervisor(kernel)
    supervisor.start(
        build_program("echo", base=0x0100_0000),
        ["echo"],
        service="echo",
        in_kernel=False,
        policy=Policy(backoff=1),
    )
    kernel.run(until=lambda: "echo" in kernel.services)
    # Something always ready to run, so the run loop returns as soon as `until` holds.
    waiter = kernel.spawn(build_program("holder", base=0x0200_0000), ["holder", "none", "1"])
    first = supervisor.group("echo")
    kernel.kill(first)  # from outside the run loop, as a fault would end it
    kernel.run(until=lambda: supervisor.group("echo") is not first)
    second = supervisor.group("echo")
    assert "echo" not in kernel.services  # started, not yet serving
    kernel.kill(second)
    kernel.run(until=lambda: "echo" in kernel.services)
    third = supervisor.group("echo")
    assert third is not second and third.running
    died_first, died_second = supervisor.restarts
    assert died_first.new_pid == second.pid and died_first.serving_at is None
    assert died_second.new_pid == third.pid and died_second.serving_at is not None
    kernel.kill(waiter)
