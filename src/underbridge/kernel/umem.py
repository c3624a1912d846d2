"""Copies between the kernel and a guest's memory, checked against the guest's own mappings.

A pointer a guest passes in a syscall is an allegation until checked (Hubris): every
byte copied must lie in a page the caller itself could access in the same way, by the
same rules the MMU applies to it: present, user, writable for copy_out, and, when the
page carries a protection key, that key open in the caller's PKRU (passed in as
`pkru`). The last rule is what stops a confused deputy: on the kernel page table every
page is U=1, so without it an in-kernel server could have the kernel read or write
another domain's memory, a gate, or a gate's control page for it. U=0 pages are never
readable or writable through these functions.
"""

from __future__ import annotations

from underbridge.abi.syscalls import Errno
from underbridge.errors import SyscallError
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageTable
from underbridge.machine.physmem import PAGE_SIZE
from underbridge.machine.pkru import access_disabled, write_disabled

MAX_COPY = 1 << 20  # the largest single copy a syscall may ask for


def _chunks(
    table: PageTable, vaddr: int, length: int, *, write: bool, pkru: int
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
        key = mapping.flags.pkey
        if access_disabled(pkru, key) or (write and write_disabled(pkru, key)):
            raise SyscallError(
                Errno.EFAULT,
                f"user address {address:#x} is in key {key}, which the caller's PKRU does not open",
            )
        size = min(length - done, PAGE_SIZE - address % PAGE_SIZE)
        pieces.append((mapping.frame + address % PAGE_SIZE, size))
        done += size
    return pieces


def check_writable(table: PageTable, vaddr: int, length: int, *, pkru: int) -> None:
    """EFAULT unless the guest may write all of [vaddr, vaddr+length)."""
    _chunks(table, vaddr, length, write=True, pkru=pkru)


def copy_in(machine: Machine, table: PageTable, vaddr: int, length: int, *, pkru: int) -> bytes:
    """The guest's bytes at [vaddr, vaddr+length); EFAULT if any is not its to read."""
    return b"".join(
        machine.mem.read(pa, n) for pa, n in _chunks(table, vaddr, length, write=False, pkru=pkru)
    )


def copy_out(machine: Machine, table: PageTable, vaddr: int, data: bytes, *, pkru: int) -> None:
    """Write data into the guest at vaddr; EFAULT (and nothing written) if not writable."""
    offset = 0
    for pa, n in _chunks(table, vaddr, len(data), write=True, pkru=pkru):
        machine.mem.write(pa, data[offset : offset + n])
        offset += n
