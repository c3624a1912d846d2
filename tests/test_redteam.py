"""The red team (`underbridge redteam`): every attack is stopped, for the expected reason.

The expected reasons are spelled out here again, independently of redteam/rows.py's own
table, so a wrong expectation there cannot make a row pass here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from underbridge import redteam
from underbridge.cli import main
from underbridge.kernel.cap import CapTable
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.oracle import Access, Violation
from underbridge.machine.pkru import pkru_allowing

# rows with a regression file each in tests/regress/ (issue 10's isolation breaks)
BREAK_ROWS = ("pkru-refresh", "forged-return", "server-fault", "unmap-buffer")

PKEY_AD = "protection key access-disabled (PKRU.AD)"
ABSENT = "page not present"
GATE_ABORT = "ud2"
# keys are handed out in order: echo 1, the legitimate client 2, their connection 3
ECHO_PKRU = pkru_allowing(read_write=[1, 3])

# row id -> substrings its observed column must contain
OBSERVED: dict[str, tuple[str, ...]] = {
    "read-server": ("#PF read of 0x", PKEY_AD, "ring 0"),
    "write-server": ("#PF write of 0x", PKEY_AD, "ring 0"),
    "read-kernel": (f"#PF read of {KERNEL_DATA:#x}: {PKEY_AD}", "ring 0"),
    "write-kernel": (f"#PF write of {KERNEL_DATA:#x}: {PKEY_AD}", "ring 0"),
    "forge-thread-id": ("#PF write of 0x7f001000", "write to a read-only page", "ring 0"),
    "read-page-tables": (f"#PF read of 0x1000: {ABSENT}", "ring 0"),
    "write-page-tables": (f"#PF write of 0x1000: {ABSENT}", "ring 0"),
    "write-gate": (f"#PF write of 0x60001000: {PKEY_AD}", "ring 0"),
    "call-foreign-gate": ("gate call = -1",),
    "gate-wrpkru-jump": ("#UD invalid opcode at rip 0x6000", "pkru 0x00000000", GATE_ABORT),
    "gate-skip-auth": ("#UD invalid opcode at rip 0x6000", f"pkru {ECHO_PKRU:#010x}", GATE_ABORT),
    "deputy": (
        "write(echo's stack) = -14",
        "write(gate code) = -14",
        "wait(own memory) = 0",
        "wait(into echo's stack) = -14",
        "wait(into the control page) = -14",
    ),
    "stale-buffer": ("#PF write of 0x5000", ABSENT, "ring 0"),
    "boot-stub-wrpkru": ("#PF fetch of 0xffffffff80001005", ABSENT, "ring 0"),
    "gate-return-page": ("#UD invalid opcode at rip 0x630000010800", "ring 0"),
    "app-read-server": ("#PF read of 0x", ABSENT, "ring 3"),
    "key-hoarding": (
        "40 connections to echo held",
        "the partner connected meanwhile",
        "key_witness: echo answered",
    ),
    "deputy-register": (
        "register(own memory) ok",
        "register(name in echo's stack) = -14",
        "register(name in the control page) = -14",
    ),
    "deputy-connect": (
        "connect(own memory) ok",
        "connect(name in echo's stack) = -14",
        "connect(name in the control page) = -14",
    ),
    "deputy-spawn": (
        "spawn(own memory) ok",
        "spawn(name in echo's stack) = -14",
        "spawn(name in the control page) = -14",
        "spawn(arguments in echo's stack) = -14",
        "spawn(arguments in the control page) = -14",
    ),
    "thread-into-gate": ("#UD invalid opcode at rip 0x6000", f"pkru {ECHO_PKRU:#010x}", GATE_ABORT),
    "thread-into-echo": ("#PF read of 0x1ffef", PKEY_AD, "ring 0", "mov rdi, qword ptr [rsp]"),
    "pmo-foreign": (
        "map(own window) = 0",
        "unmap(own window) = 0",
        "map(echo's stack) = -22",
        "map(gate) = -22",
        "map(control page) = -22",
        "map(own region's upper half) = -22",
        "unmap(echo's stack) = -22",
        "unmap(gate) = -22",
    ),
    "code-alias": (
        "#PF fetch of 0x",
        "instruction fetch from a no-execute page",
        "ring 0",
        ": wrpkru",
    ),
    "code-write": ("#PF write of 0x", "write to a read-only page", "ring 0"),
}
# the other designs' rows (each on a stage under its own design)
OBSERVED.update(
    {
        "sky-no-key": ("nokey = -1 buffer = abc; call = 0 mr1 = 8",),
        "sky-forged-key": ("call = -1 mr0 = 0", "sky_forger: (silent)"),
        "sky-stray-vmfunc": ("connect = -1 gate = 0", "vmfunc found at 0x40"),
        "pku-shared-wrpkru": (
            "connect = -1",
            "#PF read of 0x1ffe",
            ABSENT,
            "(ring 3, pkru 0x00000000)",
        ),
        "pku-user-read-server": ("#PF read of 0x1ffe", PKEY_AD, "(ring 3"),
    }
)
# every design's IPC fast path given slots it must refuse (design_rows.py)
FASTPATH_OBSERVED = ("weak = -1; deleted = -77; wild = -77; call = 0 mr1 = 8",)
OBSERVED.update({"fastpath-caps": FASTPATH_OBSERVED, "fastpath-caps-sel4": FASTPATH_OBSERVED})
FASTPATH_ROWS = {"fastpath-caps": "underbridge", "fastpath-caps-sel4": "sel4"}
# live migration (migration_rows.py; tests/test_redteam_migration.py disables each defence)
MIGRATION_ROWS = {
    "mig-stale-gate": ("first call = 0 mr1 = 7; call = 0 mr1 = 8", ABSENT, "(ring 0"),
    "mig-old-addresses": ("#PF read of 0x1ffe", ABSENT, "(ring 3", "mig_caller: call = -32"),
    "mig-race": ("calls = 20 ok", "mig_slow: (silent)"),
}
OBSERVED.update(MIGRATION_ROWS)
# a client's close in the middle of a call to a user-space server (design_rows.py)
CLOSE_ROWS = {
    "close-mid-call": ("close = 0; call = 0 mr0 = 6d61726b; again = 0 mr0 = 7",),
    "close-mid-call-zircon": ("close = 0; call = -32 mr0 = 1; again = 0 mr0 = 7",),
}
OBSERVED.update(CLOSE_ROWS)
DESIGN_ROWS = {
    "sky-no-key": "skybridge",
    "sky-forged-key": "skybridge",
    "sky-stray-vmfunc": "skybridge",
    "pku-shared-wrpkru": "pku-shared",
    "pku-user-read-server": "pku-user",
}
VM_EXIT = "VMEXIT privileged instruction in ring 0, denied by the monitor"
for _name, _insn in (
    ("cr4", "mov cr4, rax"),
    ("cr0", "mov cr0, rax"),
    ("cr3", "mov cr3, rax"),
    ("wrmsr", "wrmsr"),
    ("lgdt", "lgdt"),
    ("lidt", "lidt"),
    ("hlt", "hlt"),
    ("cli", "cli"),
    ("invlpg", "invlpg"),
    ("out", "out dx, al"),
):
    for _variant in ("plain", "hidden"):
        OBSERVED[f"priv-{_name}-{_variant}"] = (VM_EXIT, "(ring 0", f": {_insn}")
OBSERVED["priv-out-plain"] = ("#UD invalid opcode at rip 0x7f00", "(ring 0", ": ud2")
for _name, _insn in (("cr4", "mov cr4, rax"), ("wrmsr", "wrmsr")):
    OBSERVED[f"priv-{_name}-span"] = (VM_EXIT, "(ring 0", f": {_insn}")
for _name in ("wrpkru", "xrstor"):
    for _variant in ("plain", "hidden"):
        OBSERVED[f"priv-{_name}-{_variant}"] = (
            "refused at load",
            "can change PKRU",
            f"{_name} found at 0x",
            "aligned" if _variant == "plain" else ": movabs rax, 0x90909090",
        )
for _variant in ("plain", "hidden"):
    OBSERVED[f"pkru-split-{_variant}"] = (
        "refused at load",
        "can change PKRU",
        "wrpkru found at 0x",
        "aligned" if _variant == "plain" else ": mov eax, 0xef010f90",
    )


@pytest.fixture(scope="module")
def result() -> redteam.RedTeamResult:
    return redteam.run()


def test_every_row_is_checked_here():
    assert sorted(spec.id for spec in redteam.ATTACKS) == sorted([*OBSERVED, *BREAK_ROWS])
    assert len(redteam.ATTACKS) >= 50


@pytest.mark.parametrize("row_id", list(OBSERVED))
def test_row(result, row_id):
    row = next(r for r in result.rows if r.spec.id == row_id)
    assert row.verdict == redteam.PASS, row.observed
    assert not row.victim
    for part in OBSERVED[row_id]:
        assert part in row.observed, (part, row.observed)
    assert "LEAKED" not in row.attacker_output and "victim" not in row.observed
    if row.attacker is None:  # refused at load: it never ran
        assert row.spec.expect.refused_at_load
        return
    fault = row.attacker.fault
    if row.spec.expect.exception is None:
        assert fault is None and row.attacker.exit_status == 0
    elif fault.reason is not None:
        assert fault.reason is row.spec.expect.reason
    if row_id == "gate-skip-auth":  # the gate's own switch into echo's domain happened
        assert fault.pkru == ECHO_PKRU


def test_each_row_runs_under_its_design():
    modes = {spec.id: spec.mode for spec in redteam.ATTACKS}
    others = {i: m for i, m in modes.items() if m != "underbridge"}
    closes = {"close-mid-call": "sel4", "close-mid-call-zircon": "zircon"}
    assert others == DESIGN_ROWS | {"fastpath-caps-sel4": "sel4"} | closes
    assert len(modes) == (
        57 + len(DESIGN_ROWS) + len(FASTPATH_ROWS) + len(MIGRATION_ROWS) + len(CLOSE_ROWS)
    )


def test_the_design_rows_stages_place_servers_as_the_design_does(result):
    for row_id, mode in DESIGN_ROWS.items():
        row = next(r for r in result.rows if r.spec.id == row_id)
        if mode == "skybridge":  # an application; its client's trampoline and record exist
            assert not row.spec.in_kernel
            assert {"trampoline", "calling_key_record"} <= set(row.targets)
            assert "gate" not in row.targets and "echo_pkru" not in row.targets
        else:  # placed in ring 3 in a key domain: echo's PKRU is a target, gates are not
            assert "echo_pkru" in row.targets and "gate" not in row.targets


def test_rows_use_distinct_regions_and_both_rings():
    assert len({spec.program for spec in redteam.ATTACKS}) >= 12
    assert {spec.in_kernel for spec in redteam.ATTACKS} == {True, False}


def test_a_wrong_expectation_fails():
    spec = dataclasses.replace(
        redteam.ATTACKS[0],
        id="wrong",
        expect=redteam.Expect("not present", "#PF", Violation.NOT_PRESENT, Access.READ),
    )
    row = redteam.run_row(0, spec)
    assert row.verdict == redteam.FAIL and PKEY_AD in row.observed


def test_an_access_that_succeeds_fails_even_with_a_lenient_expectation():
    # the attacker reads its own code page (its own key): it prints LEAKED and exits 1
    own_code = hex(redteam.ATTACK_BASE + 0x1000)
    spec = dataclasses.replace(
        redteam.ATTACKS[0], id="own", args=(own_code,), expect=redteam.Expect("anything", "#PF")
    )
    row = redteam.run_row(0, spec)
    assert row.verdict == redteam.FAIL
    assert "LEAKED" in row.observed and "exited with status 1" in row.observed


def test_a_design_row_fails_under_a_design_without_its_check():
    """sel4 binds no trampoline and scans for no vmfunc: the stray client connects."""
    spec = next(s for s in redteam.ATTACKS if s.id == "sky-stray-vmfunc")
    row = redteam.run_row(0, dataclasses.replace(spec, mode="sel4"))
    assert row.verdict == redteam.FAIL and "connect = 0" in row.observed


@pytest.mark.parametrize("row_id", list(FASTPATH_ROWS))
def test_the_fastpath_rows_fail_on_a_fast_path_that_skips_the_rights_check(row_id, monkeypatch):
    """A naive fast path (the slot's object, whatever the cap's rights) lets the call
    through the cap without CALL reach echo, and the row catches it."""

    def naive_peek(table, slot, kind, _needs):
        cap = table._slots[slot] if 0 <= slot < len(table._slots) else None
        return cap.obj if cap is not None and isinstance(cap.obj, kind) else None

    monkeypatch.setattr(CapTable, "peek", naive_peek)
    spec = next(s for s in redteam.ATTACKS if s.id == row_id)
    row = redteam.run_row(0, spec)
    assert row.verdict == redteam.FAIL and "weak = 0" in row.observed


def test_every_row_passes(result):
    assert result.passed, [row.spec.id for row in result.rows if not row.passed]


def test_cli_json_of_chosen_rows():
    """The whole table runs once, in `result`; the command is checked on two rows."""
    chosen = ["read-server", "pkru-refresh"]
    outcome = CliRunner().invoke(
        main, ["redteam", "--json", *(f"--only={r}" for r in chosen)], catch_exceptions=False
    )
    assert outcome.exit_code == 0
    report = json.loads(outcome.output)
    assert report["passed"] is True
    assert [row["id"] for row in report["rows"]] == chosen
    for row in report["rows"]:
        assert set(row) == {"id", "attack", "expected", "observed", "verdict"}
        assert row["verdict"] == "PASS"


def test_cli_refuses_an_unknown_row():
    outcome = CliRunner().invoke(main, ["redteam", "--only", "no-such-row"])
    assert outcome.exit_code == 2 and "no red-team row 'no-such-row'" in outcome.output


def test_the_key_hoarding_row_fails_when_each_connection_takes_a_key(monkeypatch):
    """The kernel before the key economy: every application connection got a key of its
    own (as pku-shared's still do); the attacker runs out of keys and so does V."""
    from underbridge.kernel.ipc.gate_table import Gates

    naive = Gates.__init__

    def key_per_connection(self, domains, **kwargs):
        naive(self, domains, **{**kwargs, "app_key_per_connection": True})

    monkeypatch.setattr(Gates, "__init__", key_per_connection)
    spec = next(s for s in redteam.ATTACKS if s.id == "key-hoarding")
    row = redteam.run_row(0, spec)
    assert row.verdict == redteam.FAIL
    assert "to echo: -126" in row.observed  # -ENOKEY, for the attacker and for V
    assert "key_witness: connect or call to echo: -126" in row.observed
