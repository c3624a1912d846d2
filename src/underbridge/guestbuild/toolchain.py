"""Builds guest C programs into static x86-64 ELF executables with the system gcc.

A program is its source file compiled together with the guest runtime
(guest/runtime/crt0.S, ublib.c and ipc.c) against guest/include, in one gcc invocation
(each file its own translation unit). Bundled programs are found by name:
guest/apps/<name>.c, or guest/servers/<name>/<name>.c for a system server (one per
directory); a server is every .c of its directory, with its private headers beside them.

Two guest libcs (`libc=`):
  "none"  freestanding: the program's sources plus the native runtime; its only
          interface to the world is the native syscall ABI (abi/syscalls.py);
  "musl"  a hosted C program linked statically against musl (Debian's musl-tools,
          musl-gcc) plus guest/runtime/linux_glue.c and ipc.c; musl's own system calls
          are served by the kernel's Linux personality (kernel/linux_abi.py), and the
          native ABI is still there above syscalls.LINUX_NATIVE_BASE (UB_LINUX_ABI).
Large third-party sources (the SQLite amalgamation) are compiled once into a cached
object with `build_object` and linked in with `extra_objects`.

Invariants:
  - Every output is a static, freestanding, non-PIE ET_EXEC whose first PT_LOAD starts
    at `base`; code sits in its own R+X PT_LOAD, data in R or RW ones, never W+X
    (`-z separate-code`), and there is no PT_INTERP or PT_DYNAMIC.
  - The cache key is a sha256 over everything that determines the output: gcc's
    version line, the exact argument list (which includes `base`), and the name and
    bytes of every input: the sources (all of a server's), extra sources, the runtime,
    every file under guest/include, and every *.h next to a source file. A header included from
    anywhere else is NOT in the key; keep guest headers in those places.
  - A cached ELF appears only by an atomic rename of a finished build, so a file at
    its cache path is always complete, even with concurrent builders (pytest-xdist
    workers). Two racing builders produce identical files; the last rename wins.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from underbridge.errors import ToolchainError

PAGE_SIZE = 0x1000
MIN_BASE = 0x10000
BASE_LIMIT = 0x0000_7FFF_0000_0000  # top of the lower canonical half, minus stack room

#: Code generation: freestanding, no PIC, nothing that needs runtime support we lack
#: (stack protector, CET, unwind tables). -fno-tree-loop-distribute-patterns keeps gcc
#: from turning ublib.c's memset/memcpy loops into calls to themselves.
COMPILE_FLAGS: tuple[str, ...] = (
    "-std=gnu17",
    "-O2",
    "-g0",
    "-march=x86-64",
    "-mtune=generic",
    "-static",
    "-nostdlib",
    "-ffreestanding",
    "-fno-pic",
    "-no-pie",
    "-fno-stack-protector",
    "-fno-stack-clash-protection",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-mno-red-zone",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-Wall",
    "-Werror=implicit-function-declaration",
)

#: Layout: 4 KiB pages, code in its own segment, no executable stack, no build-id note
#: (so the output depends only on the inputs).
LINK_FLAGS: tuple[str, ...] = (
    "-Wl,-z,separate-code",
    "-Wl,-z,noexecstack",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,common-page-size=4096",
)

#: Linked last: libgcc supplies helpers gcc may call (e.g. 128-bit division).
LIBS: tuple[str, ...] = ("-lgcc",)

#: A hosted program against musl: the libc brings its own start-up code, string
#: functions and stack rules, so the freestanding-only flags go; UB_LINUX_ABI moves the
#: native syscall numbers above Linux's (ub_syscall.h).
FREESTANDING_ONLY = frozenset(
    {
        "-nostdlib",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-tree-loop-distribute-patterns",
        "-mno-red-zone",
        "-fno-stack-clash-protection",
    }
)
MUSL_COMPILE_FLAGS: tuple[str, ...] = (
    *(flag for flag in COMPILE_FLAGS if flag not in FREESTANDING_ONLY),
    "-DUB_LINUX_ABI",
)
MUSL_GCC = "musl-gcc"
LIBCS = ("none", "musl")

_CACHE_SCHEMA = b"underbridge-build-v1"
_MAX_STDERR_LINES = 40
_GCC_TIMEOUT_S = 600  # the SQLite amalgamation takes about 40 s
_PROGRAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_GCC_ENV_OVERRIDES = {"LC_ALL": "C"}  # stable, English diagnostics


# ---- locating things -------------------------------------------------------------


@functools.cache
def guest_root() -> Path:
    """The `guest/` directory of the checkout this module runs from."""
    for directory in Path(__file__).resolve().parents:
        candidate = directory / "guest"
        if (candidate / "runtime" / "crt0.S").is_file():
            return candidate
    raise ToolchainError(
        "the guest sources (guest/) are missing",
        hint="underbridge builds guests from its source tree: install it editable from a "
        "checkout (pip install -e .)",
    )


def repo_root() -> Path:
    """The checkout's root directory (the parent of `guest/`)."""
    return guest_root().parent


def cache_root() -> Path:
    """Root of all underbridge caches: $UNDERBRIDGE_CACHE, else <repo>/.underbridge-cache."""
    override = os.environ.get("UNDERBRIDGE_CACHE")
    return Path(override) if override else repo_root() / ".underbridge-cache"


def _bundled_programs() -> dict[str, Path]:
    """Every bundled program by name: guest/apps/<name>.c and guest/servers/<name>/<name>.c."""
    root = guest_root()
    paths = [*(root / "apps").glob("*.c"), *(root / "servers").glob("*/*.c")]
    found: dict[str, Path] = {}
    for path in sorted(paths):
        if path.parent.parent.name == "servers" and path.stem != path.parent.name:
            continue  # a server's other source files are not programs
        if path.stem in found:
            raise ToolchainError(
                f"two bundled programs are named {path.stem!r}: {found[path.stem]} and {path}",
                hint="rename one of them",
            )
        found[path.stem] = path
    return found


def list_programs() -> list[str]:
    """Names of the bundled programs (guest/apps and guest/servers), sorted."""
    return sorted(_bundled_programs())


def _find_gcc(libc: str = "none") -> str:
    name, package = (MUSL_GCC, "musl-tools") if libc == "musl" else ("gcc", "gcc")
    gcc = shutil.which(name)
    if gcc is None:
        raise ToolchainError(
            f"{name} not found on PATH", hint=f"install it: apt-get install {package}"
        )
    return gcc


@functools.cache
def _gcc_version(gcc: str) -> str:
    """First line of `gcc --version`; computed once per gcc binary per process."""
    result = _run([gcc, "--version"])
    if result.returncode != 0 or not result.stdout.strip():
        raise ToolchainError(
            f"`{gcc} --version` failed (exit status {result.returncode})",
            hint="check the gcc installation: apt-get install --reinstall gcc",
        )
    return result.stdout.splitlines()[0].strip()


# ---- inputs ----------------------------------------------------------------------


def _resolve_source(source: Path | str) -> Path:
    """A bundled program name ("hello") or a path to a user's .c file, as a path."""
    if isinstance(source, str) and _PROGRAM_NAME.fullmatch(source):
        programs = _bundled_programs()
        if source not in programs:
            raise ToolchainError(
                f"no guest program named {source!r}",
                hint=f"bundled programs: {', '.join(sorted(programs))}; "
                "or pass the path of a .c file",
            )
        return programs[source]
    return _existing_file(Path(source), suffixes=(".c",))


def _existing_file(path: Path, *, suffixes: Sequence[str]) -> Path:
    if path.suffix not in suffixes:
        raise ToolchainError(
            f"{path}: not a guest source file",
            hint=f"guest sources end in {' or '.join(suffixes)}",
        )
    if not path.is_file():
        raise ToolchainError(f"{path}: no such file", hint="check the path")
    return path.resolve()


def _program_sources(main_source: Path) -> list[Path]:
    """A program's own C files: a bundled server is every .c of its folder, its main
    file (<name>/<name>.c) first and the others by name; anything else is one file."""
    folder = main_source.parent
    if folder.parent != guest_root() / "servers":
        return [main_source]
    return [main_source, *sorted(path for path in folder.glob("*.c") if path != main_source)]


def _runtime_sources(libc: str = "none") -> tuple[Path, ...]:
    """The runtime a program links. Freestanding: crt0.S first (its _start leads .text),
    then the C files; with musl, musl brings the start-up code and the glue the rest."""
    runtime = guest_root() / "runtime"
    if libc == "musl":
        return (runtime / "linux_glue.c", runtime / "ipc.c")
    return (runtime / "crt0.S", runtime / "ublib.c", runtime / "ipc.c")


def _key_inputs(sources: Sequence[Path]) -> list[tuple[str, Path]]:
    """(label, path) of every file the build reads, in a deterministic order."""
    include = guest_root() / "include"
    labelled = [(f"src{i}:{path.name}", path) for i, path in enumerate(sources)]
    labelled += [
        (f"include:{path.relative_to(include).as_posix()}", path)
        for path in sorted(include.rglob("*"))
        if path.is_file()
    ]
    labelled += [
        (f"src{i}/{header.name}", header)
        for i, path in enumerate(sources)
        for header in sorted(path.parent.glob("*.h"))
        if header.is_file()
    ]
    return labelled


# ---- the cache key -----------------------------------------------------------------


def _framed(parts: Iterable[bytes]) -> bytes:
    """Length-prefixed concatenation, so no two part lists hash alike."""
    return b"".join(len(part).to_bytes(8, "little") + part for part in parts)


def cache_key(
    gcc_version: str, args: Sequence[str], base: int, inputs: Sequence[tuple[str, Path]]
) -> str:
    """sha256 hex digest over the toolchain, the arguments, base and input files."""
    digest = hashlib.sha256(_CACHE_SCHEMA)
    digest.update(_framed([gcc_version.encode(), *(arg.encode() for arg in args)]))
    digest.update(_framed([f"base={base:#x}".encode()]))
    for label, path in inputs:
        digest.update(_framed([label.encode(), path.read_bytes()]))
    return digest.hexdigest()


# ---- building ----------------------------------------------------------------------


def _check_base(base: int) -> None:
    if isinstance(base, bool) or not isinstance(base, int):
        raise TypeError(f"base must be an int, not {type(base).__name__}")
    if base % PAGE_SIZE:
        raise ValueError(f"base {base:#x} is not page aligned ({PAGE_SIZE:#x})")
    if not MIN_BASE <= base < BASE_LIMIT:
        raise ValueError(f"base {base:#x} outside [{MIN_BASE:#x}, {BASE_LIMIT:#x})")


def gcc_args(base: int, libc: str = "none") -> list[str]:
    """The flags of a build at `base`, without gcc itself, paths or libraries."""
    compile_flags = MUSL_COMPILE_FLAGS if libc == "musl" else COMPILE_FLAGS
    return [*compile_flags, *LINK_FLAGS, f"-Wl,-Ttext-segment={base:#x}"]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_GCC_TIMEOUT_S,
            env={**os.environ, **_GCC_ENV_OVERRIDES},
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolchainError(
            f"cannot run {cmd[0]}: {exc.strerror}", hint="install it: apt-get install gcc"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(
            f"gcc did not finish within {_GCC_TIMEOUT_S} s\n$ {shlex.join(cmd)}",
            hint="is the machine overloaded, or does a source #include a device?",
        ) from exc


def _trim(text: str, max_lines: int = _MAX_STDERR_LINES) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join([*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"])


def _run_gcc(cmd: Sequence[str], name: str) -> None:
    """Run one gcc command; a failure becomes a ToolchainError with its stderr."""
    result = _run(cmd)
    if result.returncode != 0:
        raise ToolchainError(
            f"gcc could not build {name} (exit status {result.returncode})\n"
            f"$ {shlex.join(cmd)}\n{_trim(result.stderr)}",
            hint="fix the errors gcc reports above",
        )


def _build_into(final: Path, build: Callable[[Path], None]) -> None:
    """Run `build(output)` in a temp dir inside the cache, then rename to `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent.parent))
    try:
        output = scratch / final.name
        build(output)
        os.replace(output, final)  # atomic: readers see no file or a complete one
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _command(
    gcc: str,
    args: Sequence[str],
    sources: Sequence[Path],
    output: Path,
    libs: Sequence[str] = LIBS,
    include_dirs: Sequence[Path] = (),
) -> list[str]:
    includes = [guest_root() / "include", *include_dirs]
    return [
        gcc,
        *args,
        *(f"-I{path}" for path in includes),
        "-o",
        str(output),
        *map(str, sources),
        *libs,
    ]


def _check_libc(libc: str) -> None:
    if libc not in LIBCS:
        raise ValueError(f"libc must be one of {', '.join(LIBCS)}, not {libc!r}")


def build_program(
    source: Path | str,
    *,
    base: int,
    extra_sources: Sequence[Path] = (),
    libc: str = "none",
    extra_objects: Sequence[Path] = (),
    include_dirs: Sequence[Path] = (),
) -> Path:
    """Build a guest program linked at `base`; return the path of its (cached) ELF.

    `source` is a bundled program name ("hello" is guest/apps/hello.c, "fs" is
    guest/servers/fs/fs.c and the other .c files there) or the path of a .c file
    (one in guest/servers/<name>/ brings its folder's too); `extra_sources` (.c or .S) are
    compiled and linked in as well, and `extra_objects` (from build_object) linked;
    `include_dirs` are searched for headers after guest/include (their *.h files are
    part of the cache key).
    Raises ValueError for a bad base, ToolchainError when gcc is missing or fails.
    """
    _check_base(base)
    _check_libc(libc)
    main_source = _resolve_source(source)
    program = _program_sources(main_source)
    extras = [_existing_file(Path(p), suffixes=(".c", ".S")) for p in extra_sources]
    objects = [_existing_file(Path(p), suffixes=(".o",)) for p in extra_objects]
    runtime = _runtime_sources(libc)
    if libc == "musl":
        sources = [*program, *extras, *runtime, *objects]
        libs: tuple[str, ...] = ()  # musl-gcc links libc and libgcc itself
    else:
        sources = [runtime[0], *program, *extras, *runtime[1:], *objects]
        libs = LIBS

    gcc = _find_gcc(libc)
    args = gcc_args(base, libc)
    headers = [
        (f"include{i}:{header.name}", header)
        for i, directory in enumerate(include_dirs)
        for header in sorted(Path(directory).glob("*.h"))
    ]
    key = cache_key(_gcc_version(gcc), [*args, *libs], base, [*_key_inputs(sources), *headers])
    final = cache_root() / "build" / key / f"{main_source.stem}.elf"
    if not final.is_file():

        def build(output: Path) -> None:
            _run_gcc(_command(gcc, args, sources, output, libs, include_dirs), main_source.name)

        _build_into(final, build)
    return final


def symbol(elf: Path, name: str) -> tuple[int, int]:
    """(address, size) of the global symbol `name` in a built guest's symbol table."""
    with elf.open("rb") as stream:
        table = ELFFile(stream).get_section_by_name(".symtab")
        found = table.get_symbol_by_name(name) if isinstance(table, SymbolTableSection) else None
    if not found or len(found) != 1:
        raise ToolchainError(
            f"{elf.name} defines {len(found or [])} symbols named {name!r}",
            hint="guests export what tools read as non-static globals",
        )
    return int(found[0]["st_value"]), int(found[0]["st_size"])


def build_object(source: Path, *, libc: str, flags: Sequence[str]) -> Path:
    """Compile one C file into a cached object for `extra_objects` (no runtime, no link).

    The key covers the compiler, `flags` and the source's bytes only: the file must not
    include guest headers (it is third-party code such as the SQLite amalgamation).
    """
    _check_libc(libc)
    path = _existing_file(Path(source), suffixes=(".c",))
    gcc = _find_gcc(libc)
    args = ["-c", *flags]
    key = cache_key(_gcc_version(gcc), args, 0, [("object", path)])
    final = cache_root() / "objects" / key / f"{path.stem}.o"
    if not final.is_file():

        def build(output: Path) -> None:
            _run_gcc([gcc, *args, f"-I{path.parent}", "-o", str(output), str(path)], path.name)

        _build_into(final, build)
    return final
