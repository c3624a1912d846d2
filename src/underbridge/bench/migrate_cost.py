"""`underbridge bench migrate`, part (a): what one migration costs, each way, against the
server's size (pages) and its connections.

Each point is a fresh machine under underbridge: the sized server (guest/servers/sized,
built with BALLAST_PAGES pages of data) starts in user space, the holder application
opens CONNECTIONS connections to it and calls each once, then the server is moved into
kernel space and back out (Kernel.migrate). A point reports, per direction, the
simulated cycles Kernel.migrate charged, the wall time of the call, the pages and
connections it moved, and the events it is made of (kernel/migration.py: PTE writes,
key retags, TLB flushes, gate code words, context writes).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from underbridge.bench.ipc import BenchFailed
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.kernel_space import REGION_SIZE
from underbridge.kernel.ipc.migrate import region_stack_top
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.machine.cpu import Machine

SIZED_BASE = REGION_SIZE  # the sized server's region
HOLDER_BASE = 0x40_0000


@dataclass(frozen=True, slots=True)
class Move:
    direction: str  # "in" or "out"
    ballast_pages: int  # the server's data pages beyond its image (the knob)
    pages: int  # pages whose mappings moved (what Kernel.migrate counted)
    connections: int
    cycles: int
    wall_us: float
    events: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {
            "direction": self.direction,
            "ballast_pages": self.ballast_pages,
            "pages": self.pages,
            "connections": self.connections,
            "cycles": self.cycles,
            "wall_us": round(self.wall_us, 1),
            "events": self.events,
        }


def sized_server(pages: int) -> Path:
    """The sized server's ELF with `pages` pages of data (cached by its header)."""
    include = Path(tempfile.gettempdir()) / f"underbridge-sized-{pages}"
    include.mkdir(exist_ok=True)
    header = include / "sized_pages.h"
    text = f"#define BALLAST_PAGES {pages}\n"
    if not header.exists() or header.read_text() != text:
        header.write_text(text)
    return build_program("sized", base=SIZED_BASE, include_dirs=[include])


def measure(pages: int, connections: int) -> tuple[Move, Move]:
    """One server of `pages` ballast pages with `connections` connections, moved in and
    back out: the two moves."""
    kernel = Kernel(Machine(), ipc="underbridge")
    server = kernel.spawn(
        sized_server(pages),
        ["sized", "sized"],
        name="sized",
        stack_top=region_stack_top(SIZED_BASE),
    )
    holder = kernel.spawn(
        build_program("holder", base=HOLDER_BASE), ["holder", "sized", str(connections)]
    )
    kernel.run(until=lambda: b"held" in holder.console or not holder.running)
    if not holder.running or not server.running:
        raise BenchFailed(f"holder: {bytes(holder.console).decode(errors='replace')}")
    moves = (
        _move(kernel, server, pages, to_kernel=True),
        _move(kernel, server, pages, to_kernel=False),
    )
    kernel.kill(holder)
    return moves


def _move(kernel: Kernel, server: CapGroup, pages: int, *, to_kernel: bool) -> Move:
    start = time.perf_counter()
    migration = kernel.migrate(server, to_kernel=to_kernel, reason="bench migrate")
    wall = time.perf_counter() - start
    if migration.state != "done":
        raise BenchFailed(f"migration {migration.line()}")
    return Move(
        migration.direction,
        pages,
        migration.pages,
        migration.connections,
        migration.cycles,
        wall * 1e6,
        {k: v for k, v in sorted(migration.events.items()) if v},
    )
