"""The storage stack under its supervisor: the disk outlives the block server.

The ramdisk is killed between requests; the supervisor starts it again with the disk
pages the old one had (kernel/supervisor.py, `keep`). The fs server's next block call
fails with -EPIPE: it stops itself (a #UD fault, guest/servers/fs/bio.c, blk_failed),
its caller gets -EPIPE, and the supervisor restarts it too; the new one mounts the
same disk. In user space (sel4) and in kernel space (underbridge) alike.
"""

from __future__ import annotations

import pytest

from underbridge.fs.storage import BLK_SERVICE, FS_SERVICE, serving
from underbridge.fs.ubfs import Ubfs

from .test_fs_server import console, fnv1a64, new_storage, pattern, read, write


def kill_ramdisk(storage) -> None:
    old = storage.ramdisk
    storage.supervisor.kill_now("ramdisk")
    storage.kernel.run(
        until=lambda: (
            storage.ramdisk is not old and serving(storage.kernel, storage.ramdisk, BLK_SERVICE)
        )
    )


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_the_disk_survives_a_ramdisk_restart_and_the_fs_server_follows(mode):
    storage = new_storage(mode)
    write(storage, "kept", 70_000, 9)
    before = storage.disk_image()
    kill_ramdisk(storage)
    assert storage.disk_image() == before  # the same pages, handed back
    fs = storage.fs
    client = storage.run_client("fstest", ["write", "lost", "100", "1"])
    assert "-32" in console(client)  # -EPIPE: the fs server stopped inside this request
    storage.kernel.run(until=lambda: serving(storage.kernel, storage.fs, FS_SERVICE))
    assert storage.fs is not fs and storage.fs.running
    ramdisk, fs_restart = storage.supervisor.restarts
    assert (ramdisk.name, ramdisk.ending) == ("ramdisk", "exited -9")
    assert fs_restart.name == "fs" and fs_restart.ending.startswith("faulted: #UD")
    assert console(storage.fs) == "fs: mounted blk: 1536 blocks, 384 inodes\n"
    write(storage, "after", 5000, 3)
    disk = Ubfs(storage.disk_image())
    assert disk.check() == []
    assert disk.read("kept") == pattern(9, 70_000) and disk.read("after") == pattern(3, 5000)
    assert read(storage, "kept") == (70_000, fnv1a64(pattern(9, 70_000)))


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_restart_fs_is_the_supervisors(mode):
    storage = new_storage(mode)
    old = storage.fs
    new = storage.restart_fs()
    assert new is storage.fs is not old and new.running
    [restart] = storage.supervisor.restarts
    assert (restart.name, restart.old_pid, restart.new_pid) == ("fs", old.pid, new.pid)
