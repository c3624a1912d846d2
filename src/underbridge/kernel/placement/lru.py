"""The LRU policy: kernel space as a cache of keys, like libmpk's.

libmpk (Park et al., USENIX ATC 2019) virtualises protection keys: up to 15 hardware
keys cache any number of virtual keys; a virtual key that is not cached misses, and
after repeated misses it evicts the least recently used one. Here a server in kernel
space is a cached key: a call to it is a hit (it becomes the most recent); a call to a
server in user space is a miss, and its MISSES-th miss since it last left moves it in,
evicting the least recently called server in kernel space if there is no room.
Counting misses, not moving on the first, keeps a server called once in a while from
evicting one that is called all the time.

Invariant: at most `capacity` servers in kernel space after its moves (a move in past
capacity is paired with a move out of the least recently called, asked for first).
"""

from __future__ import annotations

from collections import Counter

from underbridge.kernel.placement import Decision, View

MISSES = 4  # misses that move a server in


class LruPolicy:
    name = "lru"

    def __init__(self, misses: int = MISSES) -> None:
        self.misses = misses
        self._last_call: dict[str, int] = {}  # server -> clock of its last call
        self._missed: Counter[str] = Counter()
        self._clock = 0

    def on_call(self, server: str, view: View) -> list[Decision]:
        self._clock += 1
        self._last_call[server] = self._clock
        if server in view.placed:
            return []  # a hit
        self._missed[server] += 1
        if self._missed[server] < self.misses or view.capacity <= 0:
            return []
        del self._missed[server]
        reason = f"{self.misses} misses"
        if len(view.placed) < view.capacity:
            return [Decision(server, True, f"{reason}, a key is free")]
        victim = min(view.placed, key=lambda s: (self._last_call.get(s, 0), s))
        idle = self._clock - self._last_call.get(victim, 0)
        return [
            Decision(victim, False, f"least recently called ({idle} calls ago), for {server}"),
            Decision(server, True, f"{reason}, in place of {victim}"),
        ]

    def evict_order(self, view: View) -> list[str]:
        """Least recently called first."""
        return sorted(view.placed, key=lambda s: (self._last_call.get(s, 0), s))
