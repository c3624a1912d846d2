"""Regression: rdtsc and rdtscp in a guest returned the host's TSC.

So a guest's output (and any simulated cycles that depended on it) differed from run to
run. They now return the machine's clock: simulated cycles, or executed instructions
with --no-accounting (tests/machine/test_time_stamp.py checks the exact values).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from underbridge.cli import main
from underbridge.machine.costs import COSTS

READS_THE_CLOCK = """#include "ub.h"
static unsigned long rdtsc(void) {
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (unsigned long)hi << 32 | lo;
}
static unsigned long rdtscp(unsigned int *aux) {
    unsigned int lo, hi;
    __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(*aux));
    return (unsigned long)hi << 32 | lo;
}
int main(void) {
    unsigned int aux;
    unsigned long first = rdtsc();
    ub_write("tick\\n", 5);
    unsigned long second = rdtscp(&aux);
    ub_printf("%lu %lu %u\\n", first, second, aux);
    return 0;
}
"""


@pytest.mark.parametrize("accounting", [[], ["--no-accounting"]])
def test_rdtsc_gives_the_same_output_on_every_run(tmp_path, accounting):
    source = tmp_path / "clock.c"
    source.write_text(READS_THE_CLOCK)
    reports = [
        json.loads(
            CliRunner().invoke(main, ["run", "--c", str(source), "--json", *accounting]).output
        )
        for _ in range(2)
    ]
    assert reports[0]["output"] == reports[1]["output"]
    first, second, aux = (int(word) for word in reports[0]["output"].split()[1:])
    assert 0 < first < second and aux == 0
    if not accounting:  # consistent with the tally: the clock is the cycle count
        assert reports[0]["sim_cycles"] == reports[1]["sim_cycles"]
        assert second < reports[0]["sim_cycles"]
        write = sum(COSTS[event].cycles for event in ("syscall", "swapgs", "swapgs", "sysret"))
        assert second - first > write  # the write between the two reads is on the clock
