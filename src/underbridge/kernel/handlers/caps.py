"""Syscalls on capabilities: copy (rights only shrink), grant, delete, info."""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Rights
from underbridge.errors import SyscallError
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.channel import Endpoint
from underbridge.kernel.objects.connection import Connection
from underbridge.kernel.objects.thread import Thread

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel


def _mask(rights_mask: int) -> int:
    if rights_mask & ~int(Rights.ALL):
        raise SyscallError(Errno.EINVAL, f"unknown rights bits {rights_mask:#x}")
    return rights_mask


def sys_cap_copy(kernel: Kernel, thread: Thread, slot: int, rights_mask: int, *_: int) -> int:
    caps = thread.group.caps
    cap = caps.get(slot)
    return caps.insert(cap.derive(_mask(rights_mask)))


def sys_cap_grant(
    kernel: Kernel, thread: Thread, group_slot: int, slot: int, rights_mask: int, *_: int
) -> int:
    caps = thread.group.caps
    target = caps.lookup(group_slot, CapGroup, Rights.GRANT)
    cap = caps.get(slot)
    if not cap.rights & Rights.GRANT:
        raise SyscallError(Errno.EPERM, f"slot {slot} lacks GRANT")
    if not target.running:
        raise SyscallError(Errno.ESRCH, f"{target.name} has ended")
    return target.caps.insert(cap.derive(_mask(rights_mask)))


def sys_cap_delete(kernel: Kernel, thread: Thread, slot: int, *_: int) -> int:
    cap = thread.group.caps.get(slot)
    thread.group.caps.delete(slot)
    if isinstance(cap.obj, Connection):
        kernel.close_connection(cap.obj)  # its buffer leaves both address spaces
    elif isinstance(cap.obj, Endpoint):
        cap.obj.close()  # closing a channel handle closes that endpoint (the peer sees it)
    return 0


def sys_cap_info(kernel: Kernel, thread: Thread, slot: int, *_: int) -> int:
    cap = thread.group.caps.get(slot)
    return (int(cap.obj.obj_type) << 16) | int(cap.rights)
