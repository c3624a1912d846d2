"""Regression: a server could unmap its client's connection buffer.

R's PMO_UNMAP took the connection buffer off the kernel page table, and V faulted on its
own buffer. Fixed: connection buffers are the kernel's mappings (PMO_UNMAP: -EPERM).
"""

from __future__ import annotations

from tests.regress.breaks import run, victim_lines


def test_a_server_cannot_unmap_its_clients_buffer():
    row = run("unmap-buffer")
    assert row.attacker.fault is None and row.attacker.exit_status == 0
    assert "observed: unmap = -1" in row.attacker_output.splitlines()
    assert victim_lines(row) == ["victim: buffer ok"]
