"""Regression: a fault in a server's handler ended its caller.

R's handler faulted on V's thread (thread migration), and the kernel ended V, the
caller. Fixed: the fault is charged to the domain whose code the thread runs; R ends,
V's call returns -EPIPE, and V's later calls get -EPIPE from the dead gate's tombstone.
"""

from __future__ import annotations

from tests.regress.breaks import run, victim_lines
from underbridge.machine.oracle import Access, Violation


def test_a_fault_in_a_servers_handler_ends_the_server_not_its_caller():
    row = run("server-fault")
    fault = row.attacker.fault
    assert fault is not None and fault.reason is Violation.PKEY_ACCESS_DISABLED
    assert fault.access is Access.READ and fault.address == row.targets["echo_stack"]
    assert victim_lines(row) == ["victim: call = -32", "victim: next call = -32"]
