"""Regression: a deadlocked guest was reported as `running (status None)`, exit code 0.

A guest waiting on a notification nobody signals leaves no thread ready, so the run loop
returned and `run` printed the still-running process as if all were well. The kernel
now lists the blocked threads of live cap groups (`Kernel.blocked`), and `run` reports a
deadlock naming each and what it waits on, with a non-zero exit code.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.cli import main
from underbridge.cli.guests import EXIT_DEADLOCK
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine

WAITS_FOREVER = """#include "ub.h"
#include "ub_sys.h"
int main(void) {
    long slot = ub_notif_create();
    ub_printf("slot %ld\\n", slot);
    ub_notif_wait(slot);
    return 0;
}
"""


@pytest.fixture(scope="module")
def waits_forever_c(tmp_path_factory):
    source = tmp_path_factory.mktemp("deadlock") / "waiter.c"
    source.write_text(WAITS_FOREVER)
    return source


def test_the_kernel_lists_what_each_blocked_thread_waits_on(waits_forever_c):
    kernel = Kernel(Machine(accounting=False))
    waiter = kernel.spawn(build_program(waits_forever_c, base=0x40_0000))
    kernel.run()
    slot = int(bytes(waiter.console).split()[1])
    assert waiter.running and not kernel.sched.ready
    assert kernel.blocked() == waiter.threads
    assert waiter.threads[0].state is ThreadState.BLOCKED
    assert waiter.threads[0].waiting_on == f"notification (slot {slot})"
    kernel.kill(waiter)
    assert kernel.blocked() == []


def test_run_reports_the_deadlock_and_exits_non_zero(waits_forever_c):
    result = CliRunner().invoke(
        main, ["run", "--c", str(waits_forever_c), "--json"], catch_exceptions=False
    )
    assert result.exit_code == EXIT_DEADLOCK != 0
    report = json.loads(result.output)
    slot = int(report["output"].split()[1])
    assert report["status"] == "deadlock" and report["exit_status"] is None
    assert report["blocked"] == [
        {"thread": "waiter/1", "waiting_on": f"notification (slot {slot})"}
    ]


def test_run_names_the_blocked_thread_in_one_line(waits_forever_c):
    result = CliRunner().invoke(main, ["run", "--c", str(waits_forever_c)], catch_exceptions=False)
    assert result.exit_code == EXIT_DEADLOCK
    line = next(line for line in result.output.splitlines() if line.startswith("deadlock:"))
    assert line.startswith(
        "deadlock: no thread can run any more; waiter/1 waits on notification (slot "
    )
