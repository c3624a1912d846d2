"""Regression: bad command-line input gave tracebacks.

`run hello $'\\xff\\xfe'` (an argument that is not UTF-8), `bench ipc --rounds
99999999999999999999999`, `bench machine --scale nan` and `reproduce --out /proc/foo`
all ended in a traceback, the last two only after the work was done; so did
`bench ycsb --db-out` into a missing directory. Arguments now reach the guest as the
bytes they were; counts have a ceiling, floats must be finite, and output paths are
checked before any work: a usage error, exit code 2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from underbridge.cli import main
from underbridge.cli.common import EXIT_USER_ERROR

PRINTS_ITS_ARGUMENT = """#include "ub.h"
int main(int argc, char **argv) {
    for (const unsigned char *p = (const unsigned char *)argv[1]; *p; p++)
        ub_printf("%x ", *p);
    ub_printf("(%d)\\n", argc);
    return 0;
}
"""


def test_an_argument_that_is_not_utf8_reaches_the_guest_as_its_bytes(tmp_path):
    source = tmp_path / "args.c"
    source.write_text(PRINTS_ITS_ARGUMENT)
    command = [sys.executable, "-m", "underbridge.cli", "run", "--c", str(source), b"\xff\xfeok"]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.startswith(b"ff fe 6f 6b (2)\n")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["bench", "ipc", "--rounds", "99999999999999999999999"], "'--rounds'"),
        (["bench", "ipc", "--rounds", "0"], "'--rounds'"),
        (["bench", "deprivilege", "--rounds", "99999999999999999999999"], "'--rounds'"),
        (["bench", "ycsb", "--ops", "99999999999999999999999"], "'--ops'"),
        (["bench", "machine", "--scale", "nan"], "'--scale': nan is not a finite number"),
        (["bench", "machine", "--scale", "inf"], "'--scale'"),
        (["reproduce", "--out", "/proc/foo"], "'--out': cannot create /proc/foo"),
        (
            ["bench", "ycsb", "--db-out", "/no/such/dir/ycsb.db"],
            "'--db-out': no directory /no/such",
        ),
        (["bench", "ycsb", "--db-out", "/proc/ycsb.db"], "'--db-out': cannot write in /proc"),
    ],
)
def test_bad_options_are_usage_errors_before_any_work(args, complaint):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == EXIT_USER_ERROR
    assert f"Error: Invalid value for {complaint}" in result.output
    assert "Traceback" not in result.output


def test_an_unwritable_out_directory_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["reproduce", "--out", str(blocker / "out")], catch_exceptions=False
    )
    assert result.exit_code == EXIT_USER_ERROR and "'--out': cannot create" in result.output


def test_a_name_that_is_not_utf8_prints_as_one_line_error():
    result = CliRunner().invoke(main, ["run", "no\udcffsuch"], catch_exceptions=False)
    assert result.exit_code == EXIT_USER_ERROR
    assert result.output.startswith("error: ") and "no\ufffdsuch" in result.output
