"""Capabilities: unforgeable references to kernel objects, with rights that only shrink.

A cap group's CapTable maps slot numbers (what guests name) to Caps. A Cap is a
reference plus a rights mask; the object it names may be destroyed at any time, which
revokes every cap to it at once: lookups check `obj.alive` and treat a dead object's
cap as an empty slot (EBADCAP), and the slot is cleared on the way.

Invariants:
  - A Cap's rights never grow: copies and grants AND the rights with a mask.
  - A guest learns only slot numbers; objects and badges live in Python only.
  - `lookup` is the one place a slot becomes an object: it checks the slot, liveness,
    the object's type and the needed rights, in that order, and names the failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from underbridge.abi.syscalls import Errno, Rights
from underbridge.errors import SyscallError
from underbridge.kernel.objects.base import KernelObject

MAX_SLOTS = 1024
NO_RIGHTS = Rights(0)

T = TypeVar("T", bound=KernelObject)


@dataclass(frozen=True, slots=True)
class Cap:
    obj: KernelObject
    rights: Rights

    def derive(self, mask: int) -> Cap:
        return Cap(self.obj, Rights(self.rights & mask & Rights.ALL))


class CapTable:
    """The slots of one cap group. Slot numbers are reused lowest-first."""

    def __init__(self, size: int = MAX_SLOTS) -> None:
        self._slots: list[Cap | None] = []
        self._size = size

    def insert(self, cap: Cap) -> int:
        for slot, held in enumerate(self._slots):
            if held is None or not held.obj.alive:
                self._slots[slot] = cap
                return slot
        if len(self._slots) >= self._size:
            raise SyscallError(Errno.ENOSPC, "capability table is full")
        self._slots.append(cap)
        return len(self._slots) - 1

    def get(self, slot: int) -> Cap:
        """The live cap in `slot`, or EBADCAP (an empty, foreign or revoked slot)."""
        if not 0 <= slot < len(self._slots):
            raise SyscallError(Errno.EBADCAP, f"slot {slot} is out of range")
        cap = self._slots[slot]
        if cap is None:
            raise SyscallError(Errno.EBADCAP, f"slot {slot} is empty")
        if not cap.obj.alive:
            self._slots[slot] = None
            raise SyscallError(Errno.EBADCAP, f"slot {slot} was revoked")
        return cap

    def lookup(self, slot: int, kind: type[T], needs: Rights = NO_RIGHTS) -> T:
        """The object in `slot` if it is a `kind` and the cap carries `needs`."""
        cap = self.get(slot)
        if not isinstance(cap.obj, kind):
            raise SyscallError(
                Errno.EWRONGTYPE, f"slot {slot} holds a {cap.obj.kind_name}, not a {kind.__name__}"
            )
        if needs & ~cap.rights:
            raise SyscallError(Errno.EPERM, f"slot {slot} lacks {Rights(needs & ~cap.rights)!r}")
        return cap.obj

    def peek(self, slot: int, kind: type[T], needs: int) -> T | None:
        """`lookup` for a fast path: the object if every check passes, else None.

        Changes nothing (a revoked slot stays for `lookup` to clear): a fast path that
        gets None takes the slow path, which names the failure.
        """
        slots = self._slots
        if 0 <= slot < len(slots):
            cap = slots[slot]
            # int(): an IntFlag `&` builds a new flag object; a plain int `&` does not.
            if (
                cap is not None
                and cap.obj.alive
                and isinstance(cap.obj, kind)
                and int(cap.rights) & needs == needs
            ):
                return cap.obj
        return None

    def delete(self, slot: int) -> None:
        self.get(slot)
        self._slots[slot] = None

    def slot_of(self, obj: KernelObject) -> int | None:
        """The first slot holding a cap to `obj`, if any."""
        return next((i for i, cap in enumerate(self._slots) if cap and cap.obj is obj), None)

    def objects(self) -> list[KernelObject]:
        return [cap.obj for cap in self._slots if cap is not None and cap.obj.alive]
