"""Zircon's channels and ports: the state, without threads or guest memory.

A channel is two `Endpoint`s, each the other's `peer`. Writing on one queues a
`ChannelMessage` (bytes, and the capabilities it carries) on the other, unless a thread
blocked in a channel_call on that other endpoint waits for exactly this transaction id
(the first 4 bytes of the message, Zircon's convention): then the message goes straight
to that caller and never queues. A `Port` collects packets (key, signals) that waits
queue on it and hands each to one waiting thread.

Who reacts to what is told by callbacks, so this module knows no kernel:
  - `Endpoint.observers`: each is called with the endpoint's signals after every change
    (a message queued, the peer closed) and returns whether it stays armed;
  - `Endpoint.calls`: txid -> completion, called with the reply, or with None when no
    reply can come any more (either endpoint closed);
  - `Port.waiters`: completions called with a packet; each returns whether it took it
    (False: its thread is gone, try the next waiter). A destroyed port calls each with
    signals PORT_GONE, so no thread waits on it forever.

Invariants:
  - A message's capabilities are in no cap table while it is queued: they were taken
    out of the writer's table and go into the reader's. Discarding a message (its
    endpoint closes, or a reply cannot be delivered) closes the endpoints among them,
    as closing their handle would in Zircon; other objects stay with their owners.
  - A closed endpoint is dead (its caps revoked), has no peer, no queue, no calls and no
    observers; its peer sees PEER_CLOSED and its own pending calls fail. A closed
    endpoint can never be reopened, so a caller never waits on a channel that has gone.
  - Closing is idempotent and marks the endpoint dead first, so cascades through
    endpoints carried in messages end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from underbridge.abi.syscalls import ObjType, Signal
from underbridge.kernel.objects.base import KernelObject

if TYPE_CHECKING:
    from underbridge.kernel.cap import Cap
    from underbridge.kernel.objects.capgroup import CapGroup

READABLE, PEER_CLOSED = int(Signal.READABLE), int(Signal.PEER_CLOSED)
TXID_KERNEL = 1 << 31  # Zircon: transaction ids the kernel makes have the top bit set
TXID_BYTES = 4
PORT_GONE = -1  # the signals a port's waiters get when it is destroyed


class ChannelMessage:
    __slots__ = ("caps", "data")

    def __init__(self, data: bytes, caps: tuple[Cap, ...] = ()) -> None:
        self.data = data
        self.caps = caps

    @property
    def txid(self) -> int:
        return (
            int.from_bytes(self.data[:TXID_BYTES], "little") if len(self.data) >= TXID_BYTES else 0
        )

    def discard(self) -> None:
        """Nobody will read this message: close the endpoints it carries."""
        for cap in self.caps:
            if isinstance(cap.obj, Endpoint):
                cap.obj.close()
        self.caps = ()


Observer = Callable[["Endpoint", int], bool]
CallDone = Callable[[ChannelMessage | None], None]


class Endpoint(KernelObject):
    obj_type = ObjType.CHANNEL

    def __init__(self) -> None:
        super().__init__()
        self.peer: Endpoint | None = None
        self.owner: CapGroup | None = None  # whose `owned` list holds it (None in flight)
        self.queue: deque[ChannelMessage] = deque()
        self.calls: dict[int, CallDone] = {}
        self.observers: list[Observer] = []
        self._next_txid = 0

    def signals(self) -> int:
        return (READABLE if self.queue else 0) | (PEER_CLOSED if self.peer is None else 0)

    def new_txid(self) -> int:
        """A transaction id no call on this endpoint is waiting for."""
        self._next_txid = (self._next_txid + 1) % TXID_KERNEL
        return TXID_KERNEL | self._next_txid

    def write(self, message: ChannelMessage) -> None:
        """Send a message to the peer (the caller checked that there is one)."""
        peer = self.peer
        assert peer is not None, "write on a channel whose peer is closed"
        done = peer.calls.pop(message.txid, None) if peer.calls else None
        if done is not None:
            done(message)
            return
        peer.queue.append(message)
        peer.notify()

    def notify(self) -> None:
        """Tell every observer the signals now asserted; drop those that disarm."""
        if self.observers:
            signals = self.signals()
            observers, self.observers = self.observers, []
            kept = [observe for observe in observers if observe(self, signals)]
            self.observers = kept + self.observers  # an observer may have added one

    def close(self) -> None:
        if not self.alive:
            return
        self.mark_destroyed()
        if self.owner is not None and self in self.owner.owned:
            self.owner.owned.remove(self)
        self.owner = None
        peer, self.peer = self.peer, None
        queue, self.queue = self.queue, deque()
        self.observers = []
        self._fail_calls()
        for message in queue:
            message.discard()
        if peer is not None:
            peer.peer = None
            peer._fail_calls()
            peer.notify()

    def _fail_calls(self) -> None:
        calls, self.calls = self.calls, {}
        for done in calls.values():
            done(None)

    def destroy(self) -> None:
        self.close()


def channel_pair() -> tuple[Endpoint, Endpoint]:
    a, b = Endpoint(), Endpoint()
    a.peer, b.peer = b, a
    return a, b


PortWaiter = Callable[[Any, int], bool]


class Port(KernelObject):
    """A queue of packets (key, signals); keys are the guest's numbers, or, for the
    zircon design's own ports, the endpoint that became readable."""

    obj_type = ObjType.PORT

    def __init__(self) -> None:
        super().__init__()
        self.packets: deque[tuple[Any, int]] = deque()
        self.waiters: deque[PortWaiter] = deque()

    def queue(self, key: Any, signals: int) -> None:
        """Hand the packet to the oldest waiter still there, or keep it."""
        if not self.alive:
            return
        while self.waiters:
            if self.waiters.popleft()(key, signals):
                return
        self.packets.append((key, signals))

    def destroy(self) -> None:
        self.mark_destroyed()
        self.packets.clear()
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            waiter(None, PORT_GONE)
