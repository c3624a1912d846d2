"""Regression: a ring-3 `int 0x80` made `underbridge run` exit with code 0.

The exit code of a fault was 128 + the vector, which wraps to 0 for vector 128. It is
now 128 + the vector up to vector 127 and 255 above (the kernel's own HALT and VM-exit
reports included), so a fault never exits 0.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.cli import main
from underbridge.machine.faults import GENERAL_PROTECTION


@pytest.mark.parametrize(
    ("instruction", "vector", "code"),
    [
        ("int $0x80", 128, 255),
        ("int $0x7f", 127, 255),
        ("int $0x40", 64, 192),
        ("hlt", GENERAL_PROTECTION, 141),
    ],
)
def test_a_fault_never_exits_0(tmp_path, instruction, vector, code):
    source = tmp_path / "trap.c"
    source.write_text(f'int main(void) {{ __asm__ volatile("{instruction}"); return 0; }}\n')
    result = CliRunner().invoke(main, ["run", "--c", str(source), "--json"], catch_exceptions=False)
    report = json.loads(result.output)
    assert report["status"] == "faulted" and report["fault"]["vector"] == vector
    assert result.exit_code == code != 0
