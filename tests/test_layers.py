"""The package's layers import one way: no module imports a higher layer (LAYERS).

Every module under src/underbridge/ is parsed (ast, nothing is imported) and each of its
imports is checked against underbridge.LAYERS: every import statement counts, at module
level, under `if TYPE_CHECKING:` and inside functions alike, since a type-only or lazy
import is still a dependency of the design. Imports inside one top-level package are
not checked here: the kernel's own modules import each other in a circle (dispatch,
handlers, kernel.py, ipc/, objects/), which this test neither forbids nor fixes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import underbridge
from underbridge import LAYERS

PACKAGE = Path(underbridge.__file__).resolve().parent
ROOT = "underbridge"
RANK = {name: rank for rank, row in enumerate(LAYERS) for name in row}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    statement: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}`: {self.problem}"


def top_of(path: Path) -> str:
    """The top-level package (or module) a file of the package belongs to; '' for the
    package's own __init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "" if parts == ("__init__",) else parts[0]


def module_of(path: Path) -> list[str]:
    """A file's dotted module name, as parts: ['underbridge', 'kernel', 'ipc']."""
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_tops(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The underbridge top-level names an import statement reaches (none for others)."""
    if isinstance(node, ast.Import):
        dotted = [alias.name.split(".") for alias in node.names]
    else:
        base = (node.module or "").split(".") if node.module else []
        if node.level:  # relative: resolved against the importing module's package
            package = module_of(path)
            package = package if path.name == "__init__.py" else package[:-1]
            base = package[: len(package) - node.level + 1] + base
        # `from underbridge import kernel` reaches underbridge.kernel
        dotted = [[*base, alias.name] for alias in node.names] if base == [ROOT] else [base]
    return [parts[1] for parts in dotted if parts[0] == ROOT and len(parts) > 1]


def check_source(path: Path, source: str) -> list[Violation]:
    """Every import in `source` (the text of `path`) that breaks the layer order."""
    importer = top_of(path)
    violations = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for target in imported_tops(node, path):
            problem = _problem(importer, target)
            if problem:
                statement = ast.get_source_segment(source, node) or ast.dump(node)
                violations.append(
                    Violation(
                        path.relative_to(PACKAGE.parent.parent),
                        node.lineno,
                        " ".join(statement.split()),
                        problem,
                    )
                )
    return violations


def _problem(importer: str, target: str) -> str:
    """Why `importer` may not import `target` ('' if it may)."""
    if target == importer:
        return ""
    for name in (importer, target):
        if name and name not in RANK:
            return f"{name} is in no layer: add it to underbridge.LAYERS"
    low, high = RANK.get(importer, -1), RANK[target]
    if high > low:
        return f"{importer or ROOT} (layer {low}) imports {target}, a higher layer ({high})"
    if high == low:
        return f"{importer} imports {target}, a sibling in the same layer ({low})"
    return ""


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_package_is_in_a_layer():
    tops = {top_of(path) for path in modules()} - {""}
    assert sorted(tops - set(RANK)) == []
    assert sorted(set(RANK) - tops) == []  # no stale name in the table


def test_no_module_imports_a_higher_layer():
    violations = [str(v) for path in modules() for v in check_source(path, path.read_text())]
    assert violations == [], "\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("file", "source", "problem"),
    [
        (
            "bridge/scan.py",
            "from underbridge.kernel.loader import parse_elf\n",
            "bridge (layer 4) imports kernel, a higher layer (5)",
        ),
        (
            "machine/cpu.py",
            "if TYPE_CHECKING:\n    from underbridge.kernel.kernel import Kernel\n",
            "machine (layer 2) imports kernel, a higher layer (5)",
        ),
        (
            "abi/syscalls.py",
            "def f():\n    from underbridge import elf\n",
            "abi imports elf, a sibling in the same layer (3)",
        ),
        (
            "kernel/ipc/sel4.py",
            "from ...bench import ipc\n",
            "kernel (layer 5) imports bench, a higher layer (7)",
        ),
        (
            "errors.py",
            "import underbridge.machine.cpu\n",
            "errors (layer 0) imports machine, a higher layer (2)",
        ),
        (
            "newpkg/x.py",
            "from underbridge.errors import UserError\n",
            "newpkg is in no layer: add it to underbridge.LAYERS",
        ),
    ],
)
def test_a_wrong_import_is_named_with_its_file_and_line(file, source, problem):
    (violation,) = check_source(PACKAGE / file, source)
    assert violation.problem == problem
    assert str(violation).startswith(f"src/underbridge/{file}:{source.count(chr(10))}: `")


@pytest.mark.parametrize(
    ("file", "source"),
    [
        ("kernel/kernel.py", "from underbridge.bridge import gate\nfrom underbridge import abi\n"),
        ("kernel/ipc/sel4.py", "from . import gate_calls\nfrom ..objects import thread\n"),
        ("cli/common.py", "import click\nfrom underbridge.errors import UserError\n"),
        ("redteam/runner.py", "from underbridge.bench.ipc import ECHO_BASE\n"),
    ],
)
def test_a_downward_or_inner_import_is_allowed(file, source):
    assert check_source(PACKAGE / file, source) == []
