"""Startup: a command loads only what it runs (`--help` needs no emulator, no plots)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("matplotlib", "capstone", "unicorn", "elftools", "underbridge.kernel.kernel")


def _modules_after(*args: str) -> tuple[list[str], str]:
    """Run the CLI in a fresh interpreter; which of HEAVY it imported, and its stdout."""
    script = (
        "import json, sys\n"
        "from underbridge.cli import main\n"
        f"sys.argv = ['underbridge', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(done.stderr.strip().splitlines()[-1]), done.stdout


def test_help_imports_no_emulator_and_no_plotting():
    loaded, out = _modules_after("--help")
    assert loaded == []
    assert "Usage: underbridge" in out


def test_a_short_ipc_bench_imports_no_plotting():
    loaded, out = _modules_after("bench", "ipc", "--rounds", "3", "--json")
    assert "matplotlib" not in loaded
    assert "unicorn" in loaded  # it did run the machine
    assert json.loads(out)["rounds"] == 3
