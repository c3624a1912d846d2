"""Copies between the kernel and a guest's memory, checked against the guest's own mappings.

A pointer a guest passes in a syscall is an allegation until checked (Hubris): every
byte copied must lie in a page the guest itself could access with that access, as
its own page table says for ring 3 (present, user, writable for copy_out). Kernel
(U=0) pages are never readable or writable through these functions, so a guest cannot
make the kernel read or write kernel memory on its behalf.

Protection keys are deliberately not consulted here: a syscall's buffer check is about
what the process owns, not about which of its domains is open at the moment.
"""

from __future__ import annotations

from underbridge.errors import SyscallError
from underbridge.kernel.syscalls import Errno
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageTable
from underbridge.machine.physmem import PAGE_SIZE

MAX_COPY = 1 << 20  # the largest single copy a syscall may ask for


def _chunks(table: PageTable, vaddr: int, length: int, *, write: bool
            ) -> list[tuple[int, int]]:
    """(physical address, length) pieces of a guest range, or EFAULT."""
    if length < 0 or length > MAX_COPY or vaddr < 0 or vaddr + length > 1 << 47:
        raise SyscallError(Errno.EFAULT, f"bad user range {vaddr:#x}+{length:#x}")
    pieces = []
    done = 0
    while done < length:
        address = vaddr + done
        mapping = table.lookup(address & ~(PAGE_SIZE - 1))
        if mapping is None or not mapping.flags.user or (write and not mapping.flags.writable):
            raise SyscallError(Errno.EFAULT, f"user address {address:#x} is not accessible")
        size = min(length - done, PAGE_SIZE - address % PAGE_SIZE)
        pieces.append((mapping.frame + address % PAGE_SIZE, size))
        done += size
    return pieces


def check_writable(table: PageTable, vaddr: int, length: int) -> None:
    """EFAULT unless the guest may write all of [vaddr, vaddr+length)."""
    _chunks(table, vaddr, length, write=True)


def copy_in(machine: Machine, table: PageTable, vaddr: int, length: int) -> bytes:
    """The guest's bytes at [vaddr, vaddr+length); EFAULT if any is not its to read."""
    return b"".join(machine.mem.read(pa, n) for pa, n in _chunks(table, vaddr, length,
                                                                  write=False))


def copy_out(machine: Machine, table: PageTable, vaddr: int, data: bytes) -> None:
    """Write data into the guest at vaddr; EFAULT (and nothing written) if not writable."""
    offset = 0
    for pa, n in _chunks(table, vaddr, len(data), write=True):
        machine.mem.write(pa, data[offset : offset + n])
        offset += n
