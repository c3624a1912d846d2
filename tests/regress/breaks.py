"""Shared by the regression files of issue 10's isolation breaks: run one red-team row
(src/underbridge/redteam/rows.py) and check what every such row must show."""

from __future__ import annotations

from underbridge import redteam


def run(row_id: str) -> redteam.RowResult:
    index, spec = next((i, s) for i, s in enumerate(redteam.ATTACKS) if s.id == row_id)
    row = redteam.run_row(index, spec)
    assert row.verdict == redteam.PASS, row.observed
    assert not row.victim
    assert "LEAKED" not in row.attacker_output and "LEAKED" not in row.partner_output
    return row


def victim_lines(row: redteam.RowResult) -> list[str]:
    return [line for line in row.partner_output.splitlines() if line.startswith("victim: ")]
