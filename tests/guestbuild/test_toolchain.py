"""The guest toolchain, with the real gcc: layout, caching and error reporting."""

import shutil
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from underbridge.errors import ToolchainError
from underbridge.guestbuild import toolchain
from underbridge.guestbuild.toolchain import build_program, guest_root

DATA_PROGRAM = """\
#include "ub.h"
long counter = 1;             /* .data */
char scratch[20000];          /* .bss */
int main(int argc, char **argv)
{
    scratch[argc] = (char)counter;
    ub_printf("%s %d\\n", argv[0], scratch[argc]);
    return 0;
}
"""


def load_segments(path: Path) -> list[dict]:
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        assert elf["e_type"] == "ET_EXEC"
        return [dict(seg.header) for seg in elf.iter_segments("PT_LOAD")]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty build cache for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNDERBRIDGE_CACHE", str(cache))
    return cache


@pytest.fixture
def gcc_runs(monkeypatch) -> list[list[str]]:
    """Records every gcc build command (not `gcc --version`)."""
    runs: list[list[str]] = []
    real = toolchain._run_gcc

    def counting(cmd, name):
        runs.append(list(cmd))
        real(cmd, name)

    monkeypatch.setattr(toolchain, "_run_gcc", counting)
    return runs


def test_hello_builds(hello_elf):
    assert hello_elf.is_file()
    assert hello_elf.name == "hello.elf"
    assert hello_elf.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("base", [0x400000, 0x1234_5000])
def test_first_load_segment_starts_at_base(base):
    segments = load_segments(build_program("hello", base=base))
    assert segments[0]["p_vaddr"] == base
    assert all(seg["p_vaddr"] >= base for seg in segments)


@pytest.mark.parametrize(
    "base", [0, 0x1000, 0xF000, 0x400001, 0x400800, 0x7FFF_0000_0000, 1 << 47, -0x1000]
)
def test_bad_base_is_refused(base):
    with pytest.raises(ValueError, match="base"):
        build_program("hello", base=base)


def test_second_build_is_a_cache_hit(fresh_cache, gcc_runs):
    first = build_program("hello", base=0x400000)
    mtime = first.stat().st_mtime_ns
    second = build_program("hello", base=0x400000)
    assert second == first
    assert second.stat().st_mtime_ns == mtime
    assert len(gcc_runs) == 1
    assert first.is_relative_to(fresh_cache / "build")


def test_cache_leaves_no_temporary_files(fresh_cache, gcc_runs):
    build_program("hello", base=0x400000)
    entries = list((fresh_cache / "build").iterdir())
    assert len(entries) == 1
    assert [p.name for p in entries[0].iterdir()] == ["hello.elf"]


def test_changing_base_changes_the_key(fresh_cache, gcc_runs):
    low = build_program("hello", base=0x400000)
    high = build_program("hello", base=0x800000)
    assert low.parent != high.parent
    assert len(gcc_runs) == 2


def test_changing_a_source_byte_changes_the_key(fresh_cache, gcc_runs, tmp_path):
    source = tmp_path / "prog.c"
    source.write_bytes((guest_root() / "apps" / "hello.c").read_bytes())
    before = build_program(source, base=0x400000)
    source.write_bytes(source.read_bytes().replace(b"Hello", b"Jello"))
    after = build_program(source, base=0x400000)
    assert before.parent != after.parent
    assert len(gcc_runs) == 2
    assert b"Jello" in after.read_bytes()
    assert b"Jello" not in before.read_bytes()


def test_key_covers_every_guest_header():
    labels = [label for label, _ in toolchain._key_inputs([guest_root() / "apps" / "hello.c"])]
    assert "include:ub.h" in labels
    assert "include:ub_syscall.h" in labels


@pytest.fixture
def guest_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of guest/ that the toolchain uses instead of the real one."""
    root = tmp_path / "guest"
    shutil.copytree(guest_root(), root)
    monkeypatch.setattr(toolchain, "guest_root", lambda: root)
    return root


def test_servers_are_found_by_name():
    assert toolchain._resolve_source("echo") == guest_root() / "servers" / "echo" / "echo.c"
    assert {"echo", "hello", "pingpong"} <= set(toolchain.list_programs())


def test_every_program_links_the_ipc_runtime(hello_elf):
    with hello_elf.open("rb") as stream:
        symbols = ELFFile(stream).get_section_by_name(".symtab")
        assert symbols.get_symbol_by_name("ub_ipc_connect")


def test_server_header_is_in_the_key(fresh_cache, gcc_runs, guest_copy):
    server = guest_copy / "servers" / "fake"
    server.mkdir()
    (server / "fake.c").write_text(
        '#include "ub.h"\n#include "fake_proto.h"\nint main(void) { return FAKE_OP; }\n'
    )
    (server / "helper.c").write_text("int not_a_program;\n")  # only <dir>/<dir>.c is named
    header = server / "fake_proto.h"
    header.write_text("#define FAKE_OP 1\n")
    assert "fake" in toolchain.list_programs()
    assert "helper" not in toolchain.list_programs()
    before = build_program("fake", base=0x400000)
    header.write_text("#define FAKE_OP 2\n")
    after = build_program("fake", base=0x400000)
    assert before.parent != after.parent
    assert len(gcc_runs) == 2


def test_a_server_is_every_c_file_of_its_folder(fresh_cache, gcc_runs, guest_copy):
    server = guest_copy / "servers" / "split"
    server.mkdir()
    (server / "split.h").write_text("long layer(void);\n")
    (server / "split.c").write_text('#include "split.h"\nint main(void) { return layer(); }\n')
    layer = server / "layer.c"
    layer.write_text('#include "split.h"\nlong layer_word = 7;\nlong layer(void) { return 1; }\n')
    before = build_program("split", base=0x400000)
    assert toolchain.symbol(before, "layer_word")[1] == 8
    layer.write_text(layer.read_text().replace("return 1", "return 2"))
    after = build_program("split", base=0x400000)
    assert before.parent != after.parent  # the key covers the layer file
    assert len(gcc_runs) == 2
    built = [Path(arg).name for arg in gcc_runs[0] if arg.endswith((".c", ".S"))]
    assert built == ["crt0.S", "split.c", "layer.c", "ublib.c", "ipc.c"]


def test_fs_server_is_built_from_its_layers():
    sources = toolchain._program_sources(toolchain._resolve_source("fs"))
    assert sources[0].name == "fs.c"
    assert {"bio.c", "inode.c", "requests.c"} <= {path.name for path in sources}
    assert toolchain._program_sources(toolchain._resolve_source("hello")) == [
        guest_root() / "apps" / "hello.c"
    ]


def test_a_name_in_apps_and_servers_is_refused(guest_copy):
    (guest_copy / "servers" / "hello").mkdir()
    (guest_copy / "servers" / "hello" / "hello.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(ToolchainError, match="two bundled programs are named 'hello'"):
        build_program("hello", base=0x400000)


def test_missing_gcc(fresh_cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolchainError, match="gcc not found") as excinfo:
        build_program("hello", base=0x400000)
    assert "apt-get install gcc" in str(excinfo.value)


def test_syntax_error_reports_gcc_stderr(fresh_cache, tmp_path):
    bad = tmp_path / "broken.c"
    bad.write_text('#include "ub.h"\nint main(void) { return 0 }\n')
    with pytest.raises(ToolchainError) as excinfo:
        build_program(bad, base=0x400000)
    message = str(excinfo.value)
    assert "broken.c:2" in message
    assert "error: expected ';'" in message
    assert "-ffreestanding" in message  # the command is shown
    assert not list((fresh_cache / "build").glob("*/broken.elf"))


def test_long_gcc_output_is_trimmed(fresh_cache, tmp_path):
    bad = tmp_path / "noisy.c"
    bad.write_text("".join(f"int x{i} = ;\n" for i in range(200)))
    with pytest.raises(ToolchainError) as excinfo:
        build_program(bad, base=0x400000)
    message = str(excinfo.value)
    assert "more lines)" in message
    assert len(message.splitlines()) < 50


def test_unknown_program_name():
    with pytest.raises(ToolchainError, match="no guest program named 'no_such_app'") as excinfo:
        build_program("no_such_app", base=0x400000)
    assert "hello" in excinfo.value.hint


def test_missing_user_file(tmp_path):
    with pytest.raises(ToolchainError, match="no such file"):
        build_program(tmp_path / "absent.c", base=0x400000)


def test_extra_sources_are_linked_in(tmp_path):
    main = tmp_path / "uses_extra.c"
    main.write_text('#include "ub.h"\nint helper(void);\nint main(void) { return helper(); }\n')
    extra = tmp_path / "helper_impl.c"
    extra.write_text("int helper(void) { return 7; }\n")
    elf = build_program(main, base=0x400000, extra_sources=[extra])
    with elf.open("rb") as stream:
        symbols = ELFFile(stream).get_section_by_name(".symtab")
        assert symbols.get_symbol_by_name("helper")


@pytest.mark.parametrize("program", ["hello", "data"])
def test_code_is_rx_and_nothing_is_wx(program, tmp_path):
    source: Path | str = program
    if program == "data":
        source = tmp_path / "with_data.c"
        source.write_text(DATA_PROGRAM)
    segments = load_segments(build_program(source, base=0x400000))
    flags = [seg["p_flags"] for seg in segments]
    rwx = P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X
    assert P_FLAGS.PF_R | P_FLAGS.PF_X in {f & rwx for f in flags}  # R+X code
    assert all(not (f & P_FLAGS.PF_W and f & P_FLAGS.PF_X) for f in flags)
    assert all(f & P_FLAGS.PF_R for f in flags)
    if program == "data":
        writable = [seg for seg in segments if seg["p_flags"] & P_FLAGS.PF_W]
        assert len(writable) == 1
        assert writable[0]["p_memsz"] > writable[0]["p_filesz"]  # .bss


def test_no_dynamic_or_interp_segment(hello_elf):
    with hello_elf.open("rb") as stream:
        types = {seg["p_type"] for seg in ELFFile(stream).iter_segments()}
    assert not types & {"PT_INTERP", "PT_DYNAMIC"}


def test_a_missing_musl_gcc_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(ToolchainError, match="musl-gcc not found") as caught:
        toolchain.build_program("hello", base=0x40_0000, libc="musl")
    assert "musl-tools" in caught.value.hint


def test_an_unknown_libc_is_refused():
    with pytest.raises(ValueError, match="libc"):
        toolchain.build_program("hello", base=0x40_0000, libc="glibc")


def test_musl_flags_are_the_freestanding_ones_minus_freestanding(tmp_path):
    assert "-ffreestanding" not in toolchain.MUSL_COMPILE_FLAGS
    assert "-DUB_LINUX_ABI" in toolchain.MUSL_COMPILE_FLAGS
    assert set(toolchain.MUSL_COMPILE_FLAGS) - {"-DUB_LINUX_ABI"} < set(toolchain.COMPILE_FLAGS)


def test_symbol_reads_a_guest_global(hello_elf):
    with pytest.raises(ToolchainError, match="0 symbols named 'no_such_symbol'"):
        toolchain.symbol(hello_elf, "no_such_symbol")
    address, _size = toolchain.symbol(hello_elf, "main")
    assert address >= 0x40_0000
