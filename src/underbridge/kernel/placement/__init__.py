"""Placement policies: which servers run in kernel space, decided while they run.

A policy sees the calls the kernel carries to servers (an application's IPC_CALL, the
one event every placement makes the kernel see) and answers with `Decision`s: move
this server into kernel space, or out, and why. It never moves anything itself: the
engine (engine.py) carries its decisions out with Kernel.migrate, and logs each
migration with its reason and simulated cost. When a key is wanted and none is left,
the engine asks the policy which server to move out (`evict_order`). One module per
policy, behind one small interface (`Policy`); `policy_named` is the one list of them
(`--policy`).

Invariants every policy keeps (tests/kernel/test_placement.py checks each):
  - it never asks for more servers in kernel space than `View.capacity` (at most 15:
    key 0 is the kernel's, and every placed server holds one key), counting the
    moves out it asks for first;
  - it asks to move in only a server in user space, and out only one in kernel space;
  - it is deterministic: the same calls in the same order give the same decisions
    (its clock is the count of calls it has seen, never wall time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# machine/paging.py's NUM_PKEYS - 1 (key 0 is the kernel's), not imported: `--help` reads
# POLICIES from here and must not load the emulator (tests/test_cli.py checks the two).
MAX_IN_KERNEL = 15


@dataclass(frozen=True, slots=True)
class Decision:
    """Move `server` into kernel space (to_kernel) or out of it, because of `reason`."""

    server: str
    to_kernel: bool
    reason: str


@dataclass(frozen=True, slots=True)
class View:
    """What a policy is told with each call: where servers are, and the room left."""

    placed: frozenset[str]  # servers in kernel space now
    capacity: int  # how many may be in kernel space at once (keys permitting)


class Policy(Protocol):
    name: str

    def on_call(self, server: str, view: View) -> list[Decision]:
        """One call to `server` is about to be carried; the moves to make first (moves
        out before moves in), or none."""

    def evict_order(self, view: View) -> list[str]:
        """A key is wanted and none is left (a server spawned in kernel space, a new
        connection between two servers there): the servers in kernel space it would
        move out to free one, best first; none if it keeps them all."""


def policy_named(name: str) -> Policy:
    """A fresh policy by name (ValueError for an unknown one)."""
    from underbridge.kernel.placement.frequency import FrequencyPolicy
    from underbridge.kernel.placement.lru import LruPolicy
    from underbridge.kernel.placement.static import StaticPolicy

    makers = {"static": StaticPolicy, "frequency": FrequencyPolicy, "lru": LruPolicy}
    if name not in makers:
        raise ValueError(f"unknown placement policy {name!r}; known: {', '.join(POLICIES)}")
    return makers[name]()


POLICIES = ("static", "frequency", "lru")
