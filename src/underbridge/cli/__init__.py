"""The `underbridge` command: run guests, demos and benchmarks.

Human output by default, `--json` for scripts. Every command imports what it runs when
it runs, so `underbridge --help` loads no emulator and no plotting (tests/test_startup.py).

  common.py   consoles, user errors (exit 2 with a hint), option callbacks
  guests.py   run, demo, scan
  measure.py  bench ipc/ycsb/deprivilege/machine, reproduce
  attack.py   redteam, fuzz
  crash.py    bench crash (registers itself on measure.bench)
  profile.py  profile ipc/ycsb/run (simulated cycles by guest function)
"""

from __future__ import annotations

import click

from underbridge.cli import attack, crash, guests, measure, profile


@click.group()
@click.version_option(package_name="underbridge")
def main() -> None:
    """UnderBridge: a microkernel with servers in kernel space, isolated by protection keys."""


assert crash.bench_crash.name in measure.bench.commands  # registered on import

for _command in (
    guests.run,
    guests.demo,
    guests.scan,
    measure.bench,
    measure.reproduce,
    attack.redteam,
    attack.fuzz,
    profile.profile,
):
    main.add_command(_command)
