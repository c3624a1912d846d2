"""The static policy: first come, first placed, never moved.

A server is placed in kernel space when it is spawned there while keys last (Kernel.spawn
runs the rest in user space), or at its first call if a key is free then; once placed,
it is never moved out. It is the baseline the other policies are measured against:
whatever the call mix, the placement is the order of arrival.
"""

from __future__ import annotations

from underbridge.kernel.placement import Decision, View


class StaticPolicy:
    name = "static"

    def on_call(self, server: str, view: View) -> list[Decision]:
        if server in view.placed or len(view.placed) >= view.capacity:
            return []
        return [Decision(server, True, "first come, a key is free")]

    def evict_order(self, view: View) -> list[str]:
        return []  # first come stays: a latecomer runs in user space
