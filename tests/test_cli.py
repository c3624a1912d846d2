"""The `underbridge` command, end to end (in-process through click's runner)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from underbridge.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_hello_prints_greeting_and_summary():
    result = invoke("run", "hello")
    assert result.exit_code == 0
    assert "Hello from ring 3 of the underbridge machine!" in result.output
    assert "simulated cycles" in result.output and "guest instructions" in result.output


def test_run_hello_json_is_deterministic():
    first, second = (json.loads(invoke("run", "hello", "--json").output) for _ in range(2))
    assert first["status"] == "exited" and first["exit_status"] == 0
    assert first["sim_cycles"] == second["sim_cycles"] > 0
    assert first["guest_instructions"] == second["guest_instructions"]


def test_run_own_c_file_with_arguments(tmp_path):
    source = tmp_path / "echo.c"
    source.write_text(
        '#include "ub.h"\nint main(int argc, char **argv)'
        '{ ub_printf("%d:%s\\n", argc, argv[argc - 1]); return 5; }\n'
    )
    result = invoke("run", "--c", str(source), "one", "two")
    assert "3:two" in result.output and result.exit_code == 5


def test_faulting_program_is_reported(tmp_path):
    source = tmp_path / "crash.c"
    source.write_text("int main(void){ return *(volatile int *)0x10; }\n")
    report = json.loads(invoke("run", "--c", str(source), "--json").output)
    assert report["status"] == "faulted"
    assert report["fault"]["exception"] == "#PF" and report["fault"]["reason"] == "not_present"


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("int main(void) { return nope; }\n")
    for args in (["run", "--c", str(bad)], ["run", "no_such_program"], ["run"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "error:" in result.output


def test_demo_pku_shows_the_blocked_access_and_exits_0():
    result = invoke("demo", "pku", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["isolation_held"] is True
    reasons = [g["fault"]["reason"] for g in report["guests"] if g["fault"]]
    assert reasons == ["pkey_access_disabled", "pkey_access_disabled"]
    assert all(g["fault"]["cpl"] == 0 for g in report["guests"] if g["fault"])


def test_bench_machine_json_reports_every_figure():
    report = json.loads(invoke("bench", "machine", "--scale", "0.01", "--json").output)
    for key in (
        "mips_accounting_on",
        "mips_accounting_off",
        "syscall_roundtrip_wall_us",
        "wrpkru_pair_wall_us",
    ):
        assert report[key] > 0
    # No order between the two: with the native block hook, accounting can be faster than
    # the engine's own instruction counting, which the machine uses when accounting is off.
    assert report["loop_sim_cycles"] > report["loop_iterations"]


def test_bench_ipc_json_has_the_documented_shape():
    report = json.loads(invoke("bench", "ipc", "--mode", "sel4", "--rounds", "20", "--json").output)
    assert report["mode"] == "sel4" and report["rounds"] == 20
    assert [r["path"] for r in report["results"]] == ["app-server", "server-server"]
    for row in report["results"]:
        assert 600 <= row["sim_cycles_per_rtt"] <= 1500 and row["wall_us_per_rtt"] > 0


def test_scan_reports_a_hidden_wrpkru_and_exits_1(tmp_path, hello_elf):
    from underbridge.guestbuild.toolchain import build_program

    source = tmp_path / "hidden.c"
    source.write_text(
        '#include "ub.h"\nint main(void) {\n'
        '  __asm__ volatile("mov $0x90ef010f, %%eax" ::: "eax");\n'
        "  return 0; }\n"
    )
    elf = build_program(source, base=0x40_0000)
    result = invoke("scan", str(elf), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    hidden = [f for f in report["findings"] if f["class"] == "wrpkru"]
    assert len(hidden) == 1 and hidden[0]["aligned"] is False
    assert "mov" in " ".join(hidden[0]["overlaps"])
    clean = invoke("scan", str(hello_elf), "--json")
    assert clean.exit_code == 0
    assert not [
        f
        for f in json.loads(clean.output)["findings"]
        if f["class"] in ("wrpkru", "xrstor", "xrstors")
    ]


def test_the_cli_s_light_copies_of_bench_lists_match_them():
    """cli/ keeps its own copies of these choices so `--help` imports nothing heavy."""
    from underbridge.bench import crash as crash_bench
    from underbridge.bench import migrate_workload
    from underbridge.cli import crash as crash_cli
    from underbridge.cli import measure

    assert crash_cli.TARGETS == crash_bench.TARGETS
    assert measure.PLACEMENTS == migrate_workload.PLACEMENTS


def test_the_placement_limit_is_every_key_but_the_kernels():
    from underbridge.kernel.placement import MAX_IN_KERNEL
    from underbridge.machine.paging import NUM_PKEYS

    assert MAX_IN_KERNEL == NUM_PKEYS - 1
