"""The frequency policy: hot servers in, cold ones out, over a sliding window of calls.

It counts each server's calls among the last WINDOW calls, and every PERIOD calls
ranks the servers: a server in user space moves in when it is among the hottest, in
place of the coldest server in kernel space if there is no room, but only when it is
clearly hotter (hysteresis): its count must exceed the evicted one's by MARGIN of the
window and be at least MIN_CALLS. Without the margin two servers of nearly equal
heat would swap places at every period, paying two migrations for nothing.

Invariants: at most `capacity` servers in kernel space after its moves (each move in
past capacity is paired with a move out, asked for first); at most MAX_MOVES pairs per
period, so one phase change cannot start a migration storm in one call.
"""

from __future__ import annotations

from collections import Counter, deque

from underbridge.kernel.placement import Decision, View

WINDOW = 512  # calls
PERIOD = 64  # calls between decisions
MARGIN = 8  # calls in the window by which the newcomer must be hotter (hysteresis)
MIN_CALLS = 8  # a server with fewer calls in the window is not hot
MAX_MOVES = 4  # moves in per period


class FrequencyPolicy:
    name = "frequency"

    def __init__(self, window: int = WINDOW, period: int = PERIOD, margin: int = MARGIN) -> None:
        self.window, self.period, self.margin = window, period, margin
        self._recent: deque[str] = deque()
        self._counts: Counter[str] = Counter()
        self._clock = 0

    def on_call(self, server: str, view: View) -> list[Decision]:
        self._recent.append(server)
        self._counts[server] += 1
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            self._counts[old] -= 1
        self._clock += 1
        if self._clock % self.period:
            return []
        return self._rebalance(view)

    def evict_order(self, view: View) -> list[str]:
        """The cold servers in kernel space (fewer than MIN_CALLS calls in the window),
        coldest first: a hot one is never moved out for a newcomer."""
        cold = [s for s in view.placed if self._counts[s] < MIN_CALLS]
        return sorted(cold, key=lambda s: (self._counts[s], s))

    def _rebalance(self, view: View) -> list[Decision]:
        counts = self._counts
        hot = sorted(
            (s for s in counts if s not in view.placed and counts[s] >= MIN_CALLS),
            key=lambda s: (-counts[s], s),
        )
        cold = sorted(view.placed, key=lambda s: (counts[s], s))
        room = view.capacity - len(view.placed)
        outs: list[Decision] = []
        ins: list[Decision] = []
        for newcomer in hot[:MAX_MOVES]:
            heat = f"{counts[newcomer]} of the last {len(self._recent)} calls"
            if room > 0:
                room -= 1
                ins.append(Decision(newcomer, True, f"hot: {heat}, a key is free"))
                continue
            if not cold or counts[newcomer] < counts[cold[0]] + self.margin:
                break  # the rest are cooler still
            victim = cold.pop(0)
            outs.append(
                Decision(victim, False, f"cold: {counts[victim]} calls, making room for {newcomer}")
            )
            ins.append(Decision(newcomer, True, f"hot: {heat}, in place of {victim}"))
        return outs + ins
