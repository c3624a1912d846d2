"""Close notifications (kernel/closes.py): the fs server forgets a dead client's files.

A client opens a file, locks it EXCLUSIVE and ends without closing it. Its connection
closes as it ends; the kernel tells the fs server (UB_IPC_CLOSED with the connection's
badge), which drops the client's handles and so its lock: the next client gets a SHARED
lock at once. In user space (sel4: the server's own thread receives it) and in kernel
space (underbridge: the passive server's main thread runs the handler for it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from underbridge.abi.message import CLOSED_OP
from underbridge.fs.storage import FSTEST_BASE
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.objects.capgroup import GroupState

from .test_fs_server import console, new_storage

GUESTS = Path(__file__).parent.parent / "guests"


def locker(storage, *args: str) -> str:
    kernel = storage.kernel
    client = kernel.spawn(build_program(GUESTS / "locker.c", base=FSTEST_BASE), ["locker", *args])
    kernel.run(until=lambda: not client.running)
    assert client.state is GroupState.EXITED and client.exit_status == 0, console(client)
    return console(client)


def open_files(storage) -> int:
    """How many entries of the fs server's open-file table are in use."""
    address, size = symbol(build_program("fs", base=0x0400_0000), "files")
    raw = storage.kernel.machine.read_virtual(storage.fs.vmspace.table, address, size)
    entry = size // 32  # NFILE entries of struct file: int, long, uint32, int (32 bytes)
    return sum(1 for i in range(entry) if int.from_bytes(raw[i * 32 : i * 32 + 4], "little"))


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_a_dead_clients_files_and_locks_are_dropped(mode):
    storage = new_storage(mode)
    assert locker(storage, "hold", "db") == "hold = 0\n"
    storage.kernel.run()  # let the server take the notification
    assert open_files(storage) == 0
    assert locker(storage, "try", "db") == "try = 0\n"  # no stale EXCLUSIVE lock


def test_without_the_notification_the_lock_would_stay(monkeypatch):
    """The check above is not vacuous: with notifications off, the lock outlives its
    holder and the next SHARED request is refused."""
    from underbridge.kernel import closes

    monkeypatch.setattr(closes, "notify", lambda *args: None)
    storage = new_storage("sel4")
    assert locker(storage, "hold", "db") == "hold = 0\n"
    assert open_files(storage) == 1
    assert locker(storage, "try", "db") == "try = -16\n"  # FS_EBUSY


def test_the_reserved_operation_is_the_same_in_c_and_python():
    header = (guest_root() / "include" / "ub_ipc.h").read_text()
    assert f"#define UB_IPC_CLOSED ({CLOSED_OP}L)" in header
