"""The scheduler: round-robin over ready threads, with direct switches for IPC.

Deterministic by construction: the ready queue is FIFO and every decision depends
only on the order of kernel events and instruction counts, never on wall time.

A time slice ends when the thread has run `quantum` guest instructions in one stretch
(the machine's budget), or after `entries_per_slice` kernel entries that did not block
it, so a thread looping on syscalls cannot starve the others either.

Invariants:
  - At most one thread is RUNNING: `current`.
  - A READY thread is in `ready` exactly once; BLOCKED and DEAD threads are not.
  - `switch_to` (a direct IPC switch) is only used when `current` has just blocked.
"""

from __future__ import annotations

from collections import deque

from underbridge.errors import KernelBug
from underbridge.kernel.objects.thread import Thread, ThreadState

DEFAULT_QUANTUM = 200_000
DEFAULT_ENTRIES_PER_SLICE = 256


class Scheduler:
    def __init__(
        self, quantum: int = DEFAULT_QUANTUM, entries_per_slice: int = DEFAULT_ENTRIES_PER_SLICE
    ) -> None:
        self.quantum = quantum
        self.entries_per_slice = entries_per_slice
        self.ready: deque[Thread] = deque()
        self.current: Thread | None = None
        self._entries_left = entries_per_slice

    def add(self, thread: Thread) -> None:
        thread.state = ThreadState.READY
        self.ready.append(thread)

    def pick(self) -> Thread | None:
        """The thread to run next (the current one while its slice lasts)."""
        current = self.current
        if current is not None and current.state is ThreadState.RUNNING:
            if self._entries_left > 0:
                return current
            self.preempt()
        if not self.ready:
            self.current = None
            return None
        self.current = self.ready.popleft()
        self.current.state = ThreadState.RUNNING
        self._entries_left = self.entries_per_slice
        return self.current

    def entered_kernel(self) -> None:
        self._entries_left -= 1

    def preempt(self) -> None:
        """The current thread used up its slice: to the back of the queue."""
        thread = self.current
        if thread is None or thread.state is not ThreadState.RUNNING:
            raise KernelBug("preempting a thread that is not running")
        self.current = None
        self.add(thread)

    def block(self, thread: Thread, why: str) -> None:
        if thread.state is ThreadState.READY:
            self.ready.remove(thread)
        thread.state = ThreadState.BLOCKED
        thread.waiting_on = why
        if self.current is thread:
            self.current = None

    def wake(self, thread: Thread) -> None:
        if thread.state is not ThreadState.BLOCKED:
            raise KernelBug(f"waking {thread!r}, which is not blocked")
        thread.waiting_on = ""
        self.add(thread)

    def switch_to(self, thread: Thread) -> None:
        """Run `thread` next, now (seL4's direct switch on IPC)."""
        if self.current is not None:
            raise KernelBug("direct switch while another thread is running")
        if thread.state is ThreadState.READY:
            self.ready.remove(thread)
        thread.waiting_on = ""
        thread.state = ThreadState.RUNNING
        self.current = thread
        self._entries_left = self.entries_per_slice

    def hand_over(self, running: Thread, why: str, to: Thread) -> None:
        """`block(running, why)` then `switch_to(to)`, for a blocked `to`: an IPC fast
        path's direct switch in one call (the running thread is `current`, and a blocked
        thread is in no queue, so neither queue needs a search)."""
        if running is not self.current or to.state is not ThreadState.BLOCKED:
            raise KernelBug(f"hand-over from {running!r} to {to!r}")
        running.state = ThreadState.BLOCKED
        running.waiting_on = why
        to.waiting_on = ""
        to.state = ThreadState.RUNNING
        self.current = to
        self._entries_left = self.entries_per_slice

    def remove(self, thread: Thread) -> None:
        """Take a thread out for good (it is dying)."""
        if thread.state is ThreadState.READY:
            self.ready.remove(thread)
        if self.current is thread:
            self.current = None
        thread.state = ThreadState.DEAD
