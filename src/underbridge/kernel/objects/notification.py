"""Notifications: a counting semaphore threads can signal and wait on."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import ObjType
from underbridge.kernel.objects.base import KernelObject

if TYPE_CHECKING:
    from underbridge.kernel.objects.thread import Thread


class Notification(KernelObject):
    obj_type = ObjType.NOTIFICATION

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.waiters: deque[Thread] = deque()
