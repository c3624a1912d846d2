"""Regression, break A2: a server could forge its client's return.

R keeps its client V's call in its handler and jumps from its own second thread into
the return half of V's gate with a forged reply: the return half trusted a token R can
write, so V's code after the call ran again, on R's thread, with mr0 = 0x666. Fixed:
the return half accepts only the genuine return of the call in progress on the same
thread (bridge/gate.py); R stops at the gate's ud2, and V's call returns -EPIPE.
"""

from __future__ import annotations

from tests.regress.breaks import run, victim_lines


def test_a_server_cannot_forge_its_clients_return():
    row = run("forged-return")
    # the attacker aimed at the instruction after the gate's call of its handler
    assert f"jumping to {row.targets['partner_gate_return']:#x}" in row.attacker_output
    fault = row.attacker.fault
    assert fault is not None and fault.mnemonic == "#UD" and fault.cpl == 0
    assert fault.rip == row.targets["partner_gate_abort"]
    assert fault.pkru == row.targets["partner_pkru"]
    assert victim_lines(row) == ["victim: call = -32", "victim: next call = -32"]
