"""A profile's data and its three forms: a table per program, folded stacks, a flame graph.

`Node` is the call tree the profiler (profiler.py) fills: one node per distinct call
path, each holding the cycles counted while that path was on top (self cycles). A
`Profile` is made from it once, at the end of a run.

Frames are (program, function). A thread's path starts at its program's name; a
function of another program on that path (an in-kernel server's handler run by the
caller's thread through a gate) is labelled "program:function"; pseudo-frames, whose
program is KERNEL, are labelled as they are named: "[kernel] ipc" (the kernel's
charged work, by the accounting's category), its events as leaves ("cr3_write"),
"[gate]".

Folded stacks are Brendan Gregg's format, one line per path with self cycles: frames
joined by ";", a space, the count ("pingpong;main;ub_call;[kernel] ipc;sysret 12").
The flame graph is drawn from those lines by inferno (the Rust port of flamegraph.pl)
through the pyinferno package; `speedscope` gives the same paths in speedscope's file
format (https://www.speedscope.app/file-format-schema.json), for its interactive views.

Invariants:
  - total == sum of every path's self cycles (+ `unattributed`, which the profiler keeps
    at 0: it is shown rather than hidden if it ever is not);
  - per function: self <= total; a function's total counts each path once even when
    the function appears on it twice (recursion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from underbridge.errors import UserError

KERNEL = "[kernel]"  # the program of every pseudo-frame
UNATTRIBUTED = "[unattributed]"
NO_FRAME = "[no frame]"  # cycles of a thread before its first named function


class Node:
    """One call path: its last frame, and the cycles counted with it on top."""

    __slots__ = ("children", "cycles", "function", "label", "parent", "program", "root")

    def __init__(self, parent: Node | None, program: str, function: str | None) -> None:
        self.parent = parent
        self.program = program
        self.function = function
        self.cycles = 0
        self.children: dict[tuple[str, str | None], Node] = {}
        at_top = parent is None or parent.parent is None
        self.root = program if at_top else parent.root  # type: ignore[union-attr]
        if function is None:
            self.label = program
        elif program == self.root or program.startswith("["):
            self.label = function
        else:
            self.label = f"{program}:{function}"

    def child(self, program: str, function: str | None) -> Node:
        node = self.children.get((program, function))
        if node is None:
            node = self.children[program, function] = Node(self, program, function)
        return node


@dataclass(slots=True)
class FunctionCycles:
    self_cycles: int = 0
    total_cycles: int = 0


@dataclass(slots=True)
class Profile:
    title: str
    total: int  # the machine's simulated cycles over the profiled stretch
    stacks: dict[str, int] = field(default_factory=dict)  # folded path -> self cycles
    functions: dict[tuple[str, str], FunctionCycles] = field(default_factory=dict)
    unattributed: int = 0

    @classmethod
    def of(cls, top: Node, total: int, title: str = "") -> Profile:
        profile = cls(title, total)
        subtree = _subtree_cycles(top)
        stack: list[tuple[Node, tuple[str, ...], frozenset[tuple[str, str]]]] = [
            (child, (child.label,), frozenset()) for child in top.children.values()
        ]
        while stack:
            node, path, above = stack.pop()
            key = (node.program, node.function or NO_FRAME)
            entry = profile.functions.get(key)
            if subtree[id(node)] and entry is None:
                entry = profile.functions[key] = FunctionCycles()
            if node.cycles:
                profile.stacks[";".join(path)] = profile.stacks.get(";".join(path), 0) + node.cycles
                entry.self_cycles += node.cycles  # type: ignore[union-attr]
            if key not in above and subtree[id(node)]:
                entry.total_cycles += subtree[id(node)]  # type: ignore[union-attr]
            inner = above | {key}
            stack.extend((c, (*path, c.label), inner) for c in node.children.values())
        profile.unattributed = total - subtree[id(top)]
        if profile.unattributed:
            profile.stacks[UNATTRIBUTED] = profile.unattributed
            cycles = profile.unattributed
            profile.functions[UNATTRIBUTED, UNATTRIBUTED] = FunctionCycles(cycles, cycles)
        return profile

    # -- views -----------------------------------------------------------------------

    def programs(self) -> dict[str, int]:
        """Self cycles per program (of the code, not of the thread), largest first."""
        sums: dict[str, int] = {}
        for (program, _function), cycles in self.functions.items():
            sums[program] = sums.get(program, 0) + cycles.self_cycles
        return dict(sorted(sums.items(), key=lambda item: (-item[1], item[0])))

    def top(self, program: str, count: int) -> list[tuple[str, FunctionCycles]]:
        """The `count` functions of `program` with the most self cycles."""
        rows = [(f, c) for (p, f), c in self.functions.items() if p == program and c.self_cycles]
        rows.sort(key=lambda row: (-row[1].self_cycles, row[0]))
        return rows[:count]

    def function(self, program: str, function: str) -> FunctionCycles:
        return self.functions.get((program, function), FunctionCycles())

    def folded_lines(self) -> list[str]:
        return [f"{path} {cycles}" for path, cycles in sorted(self.stacks.items())]

    def write_folded(self, path: Path) -> None:
        path.write_text("".join(line + "\n" for line in self.folded_lines()))

    def speedscope(self) -> dict[str, object]:
        """The profile in speedscope's file format (a "sampled" profile whose samples
        are the call paths and whose weights are their self cycles)."""
        frames: dict[str, int] = {}
        samples = []
        for path in sorted(self.stacks):
            samples.append([frames.setdefault(label, len(frames)) for label in path.split(";")])
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": [{"name": name} for name in frames]},
            "profiles": [
                {
                    "type": "sampled",
                    "name": self.title or "simulated cycles",
                    "unit": "none",
                    "startValue": 0,
                    "endValue": self.total,
                    "samples": samples,
                    "weights": [self.stacks[path] for path in sorted(self.stacks)],
                }
            ],
            "name": self.title,
            "exporter": "underbridge profile",
        }

    def flame_graph_svg(self) -> str:
        """The flame graph, drawn by inferno (pyinferno); its unit is simulated cycles."""
        try:
            from pyinferno import flamegraph_from_lines
        except ImportError:
            raise UserError(
                "drawing a flame graph needs the pyinferno package",
                hint="pip install pyinferno==0.2.6 (tools/bootstrap.sh installs it)",
            ) from None
        svg = flamegraph_from_lines(self.folded_lines(), self.title or "simulated cycles")
        return svg.replace(" samples", " cycles")  # inferno counts "samples"; these are cycles

    def to_json(self, count: int) -> dict[str, object]:
        return {
            "title": self.title,
            "total_cycles": self.total,
            "unattributed_cycles": self.unattributed,
            "programs": {
                program: {
                    "self_cycles": cycles,
                    "top": [
                        {"function": f, "self": c.self_cycles, "total": c.total_cycles}
                        for f, c in self.top(program, count)
                    ],
                }
                for program, cycles in self.programs().items()
            },
        }


def _subtree_cycles(top: Node) -> dict[int, int]:
    """id(node) -> the cycles of the node and everything below it."""
    order: list[Node] = []
    pending = [top]
    while pending:
        node = pending.pop()
        order.append(node)
        pending.extend(node.children.values())
    sums: dict[int, int] = {}
    for node in reversed(order):  # children before their parent
        sums[id(node)] = node.cycles + sum(sums[id(c)] for c in node.children.values())
    return sums
