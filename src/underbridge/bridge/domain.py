"""Execution domains: one protection key per in-kernel server, and who may open which key.

THE ISOLATION RULES of the UnderBridge placement (check them against paging.py and the
mappings made in kernel/ipc/underbridge.py):

  1. In-kernel servers run in ring 0 on the kernel page table (Machine.kernel_space).
     Applications run in ring 3 on their own page tables, which map none of the kernel's
     pages and none of any in-kernel server's pages.
  2. Every page on the kernel page table is U=1, so PKRU governs ring-0 data access to
     all of them (a U=0 page would be open to every ring-0 server). One exception: the
     current-thread word (kernel/ipc/underbridge.py CURRENT_THREAD_PAGE), U=0 and
     read-only on purpose, so that every gate can read it and no server can write it
     (CR0.WP=1). It holds the running thread's id, nothing secret. (Under pku-user,
     whose servers run in ring 3, it is U=1, read-only, under a key of its own that
     every domain may only read: kernel/ipc/pku_user.py.)
  3. Key 0 is the kernel's: its text, its data (the GDT), gate code, gate save areas of
     kernel-side calls. No server's PKRU ever opens key 0. Gate pages are executable and
     not writable: a server can call into them but neither read nor write them.
  4. Each in-kernel server has a private key for its code, data, stacks, heap and the
     gate save areas of the calls it makes. Only its own PKRU opens that key.
  5. A connection's argument buffer and gate control page carry a key opened by exactly
     its two parties' PKRUs (the kernel stands in for an application client):
     between two in-kernel servers, the one key of that pair (all their connections
     share it); from an application, the server's own key (the application reaches the
     buffer through its own page table, so only the server and the kernel need it).
  6. Page tables and all other kernel state live outside every virtual address space
     (the Python kernel reaches physical memory directly): absent, not just protected.
  7. A PKRU changes only by a gate's checked `wrpkru` or by the kernel; that servers
     cannot execute `wrpkru` themselves is the scanner's job (privilege deprivation).

Keys are scarce: 15 for domains and pairs of connected domains together (key 0 is the
kernel's); an application's connections take none (kernel/ipc/gate_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from underbridge.abi.syscalls import Errno
from underbridge.errors import SyscallError
from underbridge.machine.paging import NUM_PKEYS
from underbridge.machine.pkru import pkru_allowing

KERNEL_KEY = 0


class KeyAllocator:
    """Hands out protection keys 1..15; ENOKEY when none is left."""

    def __init__(self) -> None:
        self._free = list(range(1, NUM_PKEYS))
        self.owners: dict[int, str] = {}

    def allocate(self, owner: str) -> int:
        if not self._free:
            raise SyscallError(
                Errno.ENOKEY,
                (
                    f"no protection key left for {owner}: all {NUM_PKEYS - 1} are in use by "
                    + ", ".join(sorted(self.owners.values()))
                    + " (move a server to user space to free one)"
                ),
            )
        key = self._free.pop(0)
        self.owners[key] = owner
        return key

    def release(self, key: int) -> None:
        if key in self.owners:
            del self.owners[key]
            self._free.append(key)
            self._free.sort()

    @property
    def available(self) -> int:
        return len(self._free)


@dataclass(eq=False)
class Domain:
    """An execution domain: its private key, the shared keys of its connections, and the
    keys it may only read (the pku-user design's current-thread word; none otherwise)."""

    name: str
    key: int
    shared_keys: set[int] = field(default_factory=set)
    readable: tuple[int, ...] = ()  # keys it may read, never write (pku-shared's public key)

    @property
    def pkru(self) -> int:
        return pkru_allowing(
            read_write=[self.key, *sorted(self.shared_keys)], read_only=self.readable
        )


@cache  # a pure function of the key, computed on every call an application makes
def kernel_call_pkru(shared_key: int) -> int:
    """The PKRU the kernel uses to call a gate for an application: key 0 and the buffer."""
    return pkru_allowing(read_write=[KERNEL_KEY, shared_key])
