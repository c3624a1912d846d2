"""The placement engine: runs a policy on a live kernel and carries out its decisions.

It watches every IPC_CALL the kernel sees (an application's call to a server, in kernel
space or not: both enter the kernel) and tells the policy about it before the call is
carried, with the current placement (`View`). Each decision becomes Kernel.migrate,
which logs it (Kernel.migrations) with its reason and simulated cost; the engine keeps
its own list of the migrations it asked for (`migrations`).

What it cannot see: a call an in-kernel client makes through a gate never enters the
kernel, so server-to-server calls between servers in kernel space are not counted.

When a key is wanted and none is left (Kernel.make_room, which the engine provides), it
moves out the first server of the policy's `evict_order` that can move at once.

Invariants:
  - Only cap groups that serve (hold a service) and are running are moved.
  - A server with a migration still pending is not moved again until it completes.
  - The policy's capacity is what the keys allow now: the servers in kernel space plus
    the free keys, and never more than MAX_IN_KERNEL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Rights, Sys
from underbridge.kernel.objects.connection import Connection
from underbridge.kernel.placement import MAX_IN_KERNEL, Decision, Policy, View

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.migration import Migration
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread

_CALL = int(Rights.CALL)


class PlacementEngine:
    def __init__(self, kernel: Kernel, policy: Policy) -> None:
        self.kernel = kernel
        self.policy = policy
        self.migrations: list[Migration] = []
        self._servers: dict[str, CapGroup] = {}  # by name, as the policy knows them
        kernel.syscall_observers.append(self._observe)
        kernel.make_room = self.make_room

    def make_room(self, wanted: str) -> bool:
        """A key is wanted for `wanted` and none is left: move out the first server of
        the policy's `evict_order` that can move now (quiescent, and movable: the
        mover's check). True if a key was freed."""
        mover = getattr(self.kernel.ipc, "mover", None)
        if mover is None:
            return False
        for name in self.policy.evict_order(self.view()):
            group = self._placed_group(name)
            if group is None or mover.check(self.kernel, group, to_kernel=False):
                continue
            if not mover.quiescent(self.kernel, group):
                continue
            reason = f"{self.policy.name}: making room, {wanted}"
            migration = self.kernel.migrate(group, to_kernel=False, reason=reason)
            self.migrations.append(migration)
            if migration.state == "done":
                return True
        return False

    def _placed_group(self, name: str) -> CapGroup | None:
        return next(
            (g for g in self.kernel.placement.placed_groups() if g.name == name and g.running),
            None,
        )

    def view(self) -> View:
        placed = frozenset(g.name for g in self.kernel.placement.placed_groups() if g.running)
        keys = getattr(self.kernel.ipc, "keys", None)
        free = 0 if keys is None else keys.available
        return View(placed, min(MAX_IN_KERNEL, len(placed) + free))

    def _observe(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        if number != Sys.IPC_CALL:
            return
        conn = thread.group.caps.peek(args[0], Connection, _CALL)
        if conn is None or not conn.service.alive or not conn.service.server.running:
            return
        server = conn.service.server
        self._servers[server.name] = server
        for decision in self.policy.on_call(server.name, self.view()):
            self._carry_out(decision)

    def _carry_out(self, decision: Decision) -> None:
        group = self._servers.get(decision.server) or self._placed_group(decision.server)
        if group is None or not group.running or self._pending(group):
            return
        reason = f"{self.policy.name}: {decision.reason}"
        self.migrations.append(
            self.kernel.migrate(group, to_kernel=decision.to_kernel, reason=reason)
        )

    def _pending(self, group: CapGroup) -> bool:
        return any(m.target is group and m.state == "pending" for m in self.migrations)
