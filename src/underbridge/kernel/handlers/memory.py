"""Syscalls on memory objects: create, map (rights checked against prot), unmap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Prot, Rights
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.kernel.cap import Cap
from underbridge.kernel.objects.pmo import MAX_PMO_BYTES, Pmo
from underbridge.kernel.objects.thread import Thread

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel


def sys_pmo_create(kernel: Kernel, thread: Thread, size: int, *_: int) -> int:
    if not 0 < size <= MAX_PMO_BYTES:
        raise SyscallError(Errno.EINVAL, f"memory object of {size} bytes")
    try:
        pmo = Pmo(kernel.machine.frames, size)
    except OutOfMemory as error:
        raise SyscallError(Errno.ENOMEM, str(error)) from error
    thread.group.owned.append(pmo)
    return thread.group.caps.insert(Cap(pmo, Rights.READ | Rights.WRITE | Rights.GRANT))


def sys_pmo_map(kernel: Kernel, thread: Thread, slot: int, vaddr: int, prot: int, *_: int) -> int:
    if not prot or prot & ~int(Prot.READ | Prot.WRITE):
        raise SyscallError(Errno.EINVAL, f"bad protection {prot:#x}")
    needs = Rights.READ | (Rights.WRITE if prot & Prot.WRITE else Rights(0))
    pmo = thread.group.caps.lookup(slot, Pmo, needs)
    thread.group.vmspace.map_pmo_for_guest(pmo, vaddr, Prot(prot))
    return 0


def sys_pmo_unmap(kernel: Kernel, thread: Thread, vaddr: int, *_: int) -> int:
    thread.group.vmspace.unmap_pmo_for_guest(vaddr)
    return 0
