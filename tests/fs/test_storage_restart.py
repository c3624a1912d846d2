"""The storage stack under its supervisor: the disk outlives the block server.

The ramdisk is killed between requests; the supervisor starts it again with the disk
pages the old one had (kernel/supervisor.py, `keep`). In user space (sel4) the fs
server reconnects to the new ramdisk inside its next request (guest/servers/fs/bio.c,
blk_lost) and the request succeeds; in kernel space (underbridge) the fs server runs
that request on its caller's thread, where it cannot reconnect, so it stops itself
(a #UD fault), its caller gets -EPIPE, and the supervisor restarts it too.
"""

from __future__ import annotations

import pytest

from underbridge.fs.storage import BLK_SERVICE, FS_SERVICE, serving
from underbridge.fs.ubfs import Ubfs

from .test_fs_server import console, new_storage, pattern, read, write


def kill_ramdisk(storage) -> None:
    old = storage.ramdisk
    storage.supervisor.kill_now("ramdisk")
    storage.kernel.run(
        until=lambda: (
            storage.ramdisk is not old and serving(storage.kernel, storage.ramdisk, BLK_SERVICE)
        )
    )


def test_the_disk_survives_a_ramdisk_restart_and_the_fs_server_reconnects():
    storage = new_storage("sel4")
    write(storage, "kept", 70_000, 9)
    before = storage.disk_image()
    kill_ramdisk(storage)
    assert storage.disk_image() == before  # the same pages, handed back
    fs = storage.fs
    write(storage, "after", 5000, 3)  # the fs server reconnects inside this request
    assert storage.fs is fs  # ... without a restart of its own
    assert read(storage, "kept")[0] == 70_000
    disk = Ubfs(storage.disk_image())
    assert disk.check() == []
    assert disk.read("kept") == pattern(9, 70_000) and disk.read("after") == pattern(3, 5000)
    [restart] = storage.supervisor.restarts
    assert (restart.name, restart.ending, restart.gave_up) == ("ramdisk", "exited -9", "")


def test_in_kernel_space_the_fs_server_restarts_after_its_device():
    storage = new_storage("underbridge")
    write(storage, "kept", 70_000, 9)
    before = storage.disk_image()
    kill_ramdisk(storage)
    assert storage.disk_image() == before
    fs = storage.fs
    client = storage.run_client("fstest", ["write", "lost", "100", "1"])
    assert "-32" in console(client)  # -EPIPE: the fs server stopped inside this request
    storage.kernel.run(until=lambda: serving(storage.kernel, storage.fs, FS_SERVICE))
    assert storage.fs is not fs and storage.fs.running
    ramdisk, fs_restart = storage.supervisor.restarts
    assert ramdisk.name == "ramdisk" and fs_restart.name == "fs"
    assert fs_restart.ending.startswith("faulted") and "#UD" in fs_restart.ending
    write(storage, "after", 5000, 3)
    disk = Ubfs(storage.disk_image())
    assert disk.check() == []
    assert disk.read("kept") == pattern(9, 70_000) and disk.read("after") == pattern(3, 5000)


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_restart_fs_is_the_supervisors(mode):
    storage = new_storage(mode)
    old = storage.fs
    new = storage.restart_fs()
    assert new is storage.fs is not old and new.running
    [restart] = storage.supervisor.restarts
    assert (restart.name, restart.old_pid, restart.new_pid) == ("fs", old.pid, new.pid)
