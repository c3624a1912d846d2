"""Regression: a server could hurt or fool the domains that call it (issue 10, items 1-3).

Four red-team rows, each a real attack by an in-kernel server R on an in-kernel partner
(src/underbridge/redteam.py, guest/attacks/):

  pkru-refresh   (break A1) victim server S calls R with its secret's address; while S's
                 thread runs R's handler, R's second thread connects to S, and the kernel
                 rewrote the PKRU of every thread of S, the one in R's handler included:
                 the handler read S's secret (LEAKED) and S died when R ended.
  forged-return  (break A2) R keeps its client V's call in its handler and jumps from its
                 own second thread into the return half of V's gate with a forged reply:
                 the return half trusted a token R can write, so V's code after the call
                 ran again, on R's thread, with mr0 = 0x666.
  server-fault   R's handler faulted on V's thread, and the kernel ended V, the caller.
  unmap-buffer   R's PMO_UNMAP took the connection buffer off the kernel page table, and V
                 faulted on its own buffer.

Fixed when a thread keeps the PKRU of the domain whose code it runs, the return half
accepts only the genuine return of the call in progress on the same thread, a fault in
a foreign handler ends the server (the caller's call returns -EPIPE), and connection
buffers are mapped by the kernel for good (PMO_UNMAP: -EPERM).
"""

from __future__ import annotations

import pytest

from underbridge import redteam
from underbridge.machine.oracle import Access, Violation

BREAK_ROWS = ("pkru-refresh", "forged-return", "server-fault", "unmap-buffer")


def run(row_id: str) -> redteam.RowResult:
    index, spec = next((i, s) for i, s in enumerate(redteam.ATTACKS) if s.id == row_id)
    return redteam.run_row(index, spec)


@pytest.fixture(scope="module")
def rows() -> dict[str, redteam.RowResult]:
    return {row_id: run(row_id) for row_id in BREAK_ROWS}


@pytest.mark.parametrize("row_id", BREAK_ROWS)
def test_the_attack_is_stopped_and_the_victim_lives_on(rows, row_id):
    row = rows[row_id]
    assert row.verdict == redteam.PASS, row.observed
    assert not row.victim
    assert "LEAKED" not in row.attacker_output and "LEAKED" not in row.partner_output


def victim_lines(row: redteam.RowResult) -> list[str]:
    return [line for line in row.partner_output.splitlines() if line.startswith("victim: ")]


def test_a_refresh_does_not_open_the_victims_memory_to_its_servers_handler(rows):
    row = rows["pkru-refresh"]
    fault = row.attacker.fault
    assert fault is not None and fault.mnemonic == "#PF" and fault.cpl == 0
    assert fault.reason is Violation.PKEY_ACCESS_DISABLED and fault.access is Access.READ
    assert fault.address == row.targets["partner_secret"]
    assert "connected to the victim's service" in row.attacker_output  # the refresh happened
    assert victim_lines(row) == ["victim: call = -32"]


def test_a_server_cannot_forge_its_clients_return(rows):
    row = rows["forged-return"]
    # the attacker aimed at the instruction after the gate's call of its handler
    assert f"jumping to {row.targets['partner_gate_return']:#x}" in row.attacker_output
    fault = row.attacker.fault
    assert fault is not None and fault.mnemonic == "#UD" and fault.cpl == 0
    assert fault.rip == row.targets["partner_gate_abort"]
    assert fault.pkru == row.targets["partner_pkru"]
    assert victim_lines(row) == ["victim: call = -32", "victim: next call = -32"]


def test_a_fault_in_a_servers_handler_ends_the_server_not_its_caller(rows):
    row = rows["server-fault"]
    fault = row.attacker.fault
    assert fault is not None and fault.reason is Violation.PKEY_ACCESS_DISABLED
    assert fault.access is Access.READ and fault.address == row.targets["echo_stack"]
    # and the gate of the dead server answers -EPIPE from then on (its tombstone)
    assert victim_lines(row) == ["victim: call = -32", "victim: next call = -32"]


def test_a_server_cannot_unmap_its_clients_buffer(rows):
    row = rows["unmap-buffer"]
    assert row.attacker.fault is None and row.attacker.exit_status == 0
    assert "observed: unmap = -1" in row.attacker_output.splitlines()
    assert victim_lines(row) == ["victim: buffer ok"]
