"""Syscalls on notifications: create, signal (wakes one waiter), wait (blocks at zero)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Rights
from underbridge.kernel.cap import Cap
from underbridge.kernel.objects.notification import Notification
from underbridge.kernel.objects.thread import Thread

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel


def sys_notif_create(kernel: Kernel, thread: Thread, *_: int) -> int:
    notification = Notification()
    thread.group.owned.append(notification)
    return thread.group.caps.insert(Cap(notification, Rights.SIGNAL | Rights.WAIT | Rights.GRANT))


def sys_notif_signal(kernel: Kernel, thread: Thread, slot: int, *_: int) -> int:
    notification = thread.group.caps.lookup(slot, Notification, Rights.SIGNAL)
    while notification.waiters:
        waiter = notification.waiters.popleft()
        if waiter.alive:
            kernel.wake_with(waiter, 0)
            return 0
    notification.count += 1
    return 0


def sys_notif_wait(kernel: Kernel, thread: Thread, slot: int, *_: int) -> int | None:
    notification = thread.group.caps.lookup(slot, Notification, Rights.WAIT)
    if notification.count > 0:
        notification.count -= 1
        return 0
    notification.waiters.append(thread)
    kernel.sched.block(thread, f"notification (slot {slot})")
    return None
