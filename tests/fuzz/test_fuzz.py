"""`underbridge fuzz`: the CI-sized campaign, its determinism, and how findings are reported.

The CI campaign (3,000 syscalls, 200 ELF mutants, seed 1) must find no kernel
exception, and every class of outcome must occur in it, so that a fuzzer that stopped
reaching the kernel (every run refused, every guest dead at once) fails here too.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from underbridge import fuzz
from underbridge.cli import main
from underbridge.fuzz import elf
from underbridge.fuzz.syscalls import MAX_IDLE, PLACEMENTS
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel


@pytest.fixture(scope="module")
def ci_report() -> fuzz.FuzzReport:
    return fuzz.run(3000, 200, seed=1)


def test_the_ci_campaign_finds_no_kernel_exception(ci_report):
    assert ci_report.kernel_exceptions == 0 and ci_report.exceptions == []
    assert ci_report.syscalls >= 3000 and ci_report.elf_mutants == 200
    assert ci_report.servers_lost == 0


def test_every_outcome_occurs_in_the_ci_campaign(ci_report):
    errnos = {name for name in ci_report.results if name.startswith("E")}
    assert {"EBADCAP", "EFAULT", "EINVAL", "ENOSYS", "EPERM", "EBADF"} <= errnos
    assert ci_report.results["ok"] > 0 and ci_report.results["blocked"] > 0
    assert sum(ci_report.guest_faults.values()) > 0
    assert ci_report.syscall_runs["completed"] > 0
    assert {"ElfError", "ResourceExhausted", "spawned-exited", "spawned-faulted"} <= set(
        ci_report.elf_outcomes
    )
    assert set(ci_report.placements) == {placement.label for placement in PLACEMENTS}
    assert sum(ci_report.elf_outcomes.values()) == ci_report.elf_mutants


def test_the_same_seed_gives_the_same_counts():
    first, second = fuzz.run(400, 30, seed=9), fuzz.run(400, 30, seed=9)
    assert first.counts() == second.counts()
    assert fuzz.run(400, 30, seed=10).counts() != first.counts()


def test_mutants_are_reproducible_and_change_the_file():
    data = build_program("hello", base=0x40_0000).read_bytes()
    assert elf.mutate(data, random.Random(3)) == elf.mutate(data, random.Random(3))
    rng = random.Random(4)
    mutants = [elf.mutate(data, rng) for _ in range(50)]
    assert all(applied for _, applied in mutants)
    assert sum(mutant != data for mutant, _ in mutants) >= 45  # some land on equal values
    assert {name for _, applied in mutants for name in applied} == {
        mutation.__name__ for mutation in elf.MUTATIONS
    }


def test_the_huge_size_mutation_sets_one_memsz_past_the_machines_memory():
    data = build_program("hello", base=0x40_0000).read_bytes()
    offsets = [elf._phdr_at(bytearray(data), random.Random(i)) for i in range(8)]
    for seed in range(8):
        mutant = elf.huge_size(bytearray(data), random.Random(seed))
        changed = [
            offset
            for offset in set(offsets)
            if mutant[offset + 40 : offset + 48] != data[offset + 40 : offset + 48]
        ]
        assert len(changed) == 1
        memsz = int.from_bytes(mutant[changed[0] + 40 : changed[0] + 48], "little")
        assert memsz >= 64 << 20  # the machine has 64 MiB


def test_the_command_prints_the_counts_and_exits_zero():
    result = CliRunner().invoke(
        main, ["fuzz", "--syscalls", "200", "--elf", "10"], catch_exceptions=False
    )
    assert result.exit_code == 0
    for row in (
        "syscall runs",
        "syscalls issued",
        "guest faults",
        "ELF mutants",
        "clean errors",
        "kernel exceptions",
    ):
        assert row in result.output


def test_a_kernel_exception_is_recorded_and_fails_the_command(monkeypatch):
    """The harness itself: an exception escaping Kernel.run is a finding, summarised
    with its innermost frame, and makes the command exit 1."""

    def broken_run(self, until=None):
        raise IndexError("stale slot")

    monkeypatch.setattr(Kernel, "run", broken_run)
    result = CliRunner().invoke(
        main, ["fuzz", "--syscalls", "1", "--elf", "0", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["kernel_exceptions"] == MAX_IDLE  # one per run, until the fuzzer gives up
    assert report["exceptions"][0].startswith("IndexError: stale slot at syscalls.py:")
    assert "seed 0x" in report["exceptions"][0]
