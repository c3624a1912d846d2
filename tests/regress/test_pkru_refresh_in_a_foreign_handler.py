"""Regression, break A1: a PKRU refresh handed a migrated thread its owner's rights.

Victim server S calls attacker R with its secret's address; while S's thread runs R's
handler, R's second thread connects to S, and the kernel rewrote the PKRU of every
thread of S, the one in R's handler included: the handler read S's secret (LEAKED), and
S died when R ended. Fixed: a thread keeps the PKRU of the domain whose code it runs;
the fault is R's, and S's call returns -EPIPE.
"""

from __future__ import annotations

from tests.regress.breaks import run, victim_lines
from underbridge.machine.oracle import Access, Violation


def test_a_refresh_does_not_open_the_victims_memory_to_its_servers_handler():
    row = run("pkru-refresh")
    fault = row.attacker.fault
    assert fault is not None and fault.mnemonic == "#PF" and fault.cpl == 0
    assert fault.reason is Violation.PKEY_ACCESS_DISABLED and fault.access is Access.READ
    assert fault.address == row.targets["partner_secret"]
    assert "connected to the victim's service" in row.attacker_output  # the refresh happened
    assert victim_lines(row) == ["victim: call = -32"]
