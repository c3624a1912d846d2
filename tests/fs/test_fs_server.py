"""The storage stack end to end: the ramdisk and fs servers and the fstest client, real
binaries on the real kernel and emulated CPU, in user space (sel4) and in kernel space
(underbridge); the disk image is then read back with the Python reader."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from underbridge.abi.syscalls import Sys
from underbridge.fs import ubfs
from underbridge.fs.storage import (
    FS_BASE,
    FSTEST_BASE,
    RAMDISK_BASE,
    Storage,
    StorageError,
    start_fs,
    start_storage,
)
from underbridge.fs.ubfs import Ubfs
from underbridge.guestbuild.toolchain import build_program, symbol
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.machine.cpu import Machine

MODES = ("sel4", "underbridge")
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def pattern(seed: int, size: int) -> bytes:
    """What `fstest write NAME size seed` writes: fstest.c's pattern_word(seed, k) at bytes
    8k .. 8k+7, little-endian."""
    words = (size + 7) // 8
    multiplier, mask = 0x9E3779B97F4A7C15, (1 << 64) - 1
    return struct.pack(
        f"<{words}Q", *(((k ^ (seed << 40)) * multiplier) & mask for k in range(words))
    )[:size]


def fnv1a64(data: bytes) -> int:
    value = FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFF_FFFF_FFFF_FFFF
    return value


def new_storage(mode: str) -> Storage:
    return start_storage(Kernel(Machine(), ipc=mode), in_kernel=mode == "underbridge")


@pytest.fixture(params=MODES)
def storage(request) -> Storage:
    return new_storage(request.param)


def console(group: CapGroup) -> str:
    return bytes(group.console).decode(errors="replace")


def fstest(storage: Storage, *args: str, status: int = 0) -> str:
    client = storage.run_client("fstest", list(args))
    assert client.state is GroupState.EXITED, (client.fault, console(client))
    assert client.exit_status == status, console(client)
    return console(client)


def write(storage: Storage, name: str, size: int, seed: int) -> None:
    assert fstest(storage, "write", name, str(size), str(seed)) == f"fstest: wrote {name} {size}\n"


def read(storage: Storage, name: str) -> tuple[int, int]:
    """(size, FNV-1a-64) of the file as fstest reads it through the fs server."""
    out = fstest(storage, "read", name)
    match = re.fullmatch(rf"fstest: read {name} (\d+) ([0-9a-f]{{16}})\n", out)
    assert match, out
    return int(match[1]), int(match[2], 16)


def test_servers_come_up_where_the_mode_places_them(storage):
    kernel = storage.kernel
    assert console(storage.fs) == "fs: formatted blk: 1536 blocks, 384 inodes\n"
    assert kernel.services["blk"].server is storage.ramdisk
    assert kernel.services["fs"].server is storage.fs
    in_kernel = storage.in_kernel
    assert in_kernel == (kernel.ipc.name == "underbridge")
    for group in (storage.ramdisk, storage.fs):
        assert (group.threads[0].context.cpl == 0) == in_kernel  # ring 0 in kernel space


def test_suite(storage):
    assert fstest(storage, "suite") == "fstest: ok\n"
    assert Ubfs(storage.disk_image()).check() == []
    assert storage.fs.running and storage.ramdisk.running


def test_files_survive_a_restart_of_the_fs_server(storage):
    write(storage, "kept", 70_000, 9)  # past the 12 direct blocks
    before = read(storage, "kept")
    old = storage.fs
    new = storage.restart_fs()
    assert not old.running and new.running and new is not old
    assert console(new) == "fs: mounted blk: 1536 blocks, 384 inodes\n"
    assert read(storage, "kept") == before == (70_000, fnv1a64(pattern(9, 70_000)))


def test_the_disk_image_holds_what_was_written(storage):
    sizes = {"empty": (0, 1), "tiny": (5, 2), "block": (4096, 3), "multi": (70_000, 4)}
    for name, (size, seed) in sizes.items():
        write(storage, name, size, seed)
    write(storage, "tiny", 3, 5)  # rewritten shorter: the old bytes must be gone
    disk = Ubfs(storage.disk_image())
    assert disk.check() == []
    assert disk.files() == {"empty": 0, "tiny": 3, "block": 4096, "multi": 70_000}
    assert disk.read("tiny") == pattern(5, 3)
    for name in ("empty", "block", "multi"):
        size, seed = sizes[name]
        assert disk.read(name) == pattern(seed, size)


def test_a_full_disk_fails_with_enospc_and_stays_consistent(storage):
    out = fstest(storage, "write", "huge", str(8 << 20), "6", status=1)  # the disk: 6 MiB
    assert "failed: -28" in out  # FS_ENOSPC
    disk = Ubfs(storage.disk_image())
    assert disk.check() == []
    size = disk.files()["huge"]
    assert 5 << 20 < size < 6 << 20
    assert disk.read("huge") == pattern(6, size)  # every byte it kept is the right one


def poke(storage: Storage, offset: int, data: bytes) -> None:
    """Write `data` into the disk at `offset`, behind the servers' backs (one page)."""
    vaddr = storage.disk_at + offset
    assert vaddr // 4096 == (vaddr + len(data) - 1) // 4096
    physical = storage.ramdisk.vmspace.table.translate(vaddr)
    assert physical is not None
    storage.kernel.machine.mem.write(physical, data)


def test_a_corrupt_pointer_fails_the_request_not_the_server(storage):
    write(storage, "victim", 10, 1)
    disk = Ubfs(storage.disk_image())
    inum = next(inum for _, inum, raw in disk.entries() if raw.startswith(b"victim\0"))
    inode_at = disk.sb.inode_start * 4096 + inum * ubfs.INODE_SIZE
    poke(storage, inode_at + 16, (2).to_bytes(4, "little"))  # direct[0] -> the inode table
    storage.restart_fs()  # a cold cache: the next read goes to the device
    assert "failed: -5 " in fstest(storage, "read", "victim", status=1)  # FS_EIO
    assert fstest(storage, "write", "other", "100", "2") == "fstest: wrote other 100\n"
    assert Ubfs(storage.disk_image()).read("other") == pattern(2, 100)


def test_a_superblock_with_impossible_geometry_is_not_mounted(storage):
    poke(storage, 12, (10**6).to_bytes(4, "little"))  # block_count: more than the device
    with pytest.raises(StorageError, match="holds no usable file system"):
        storage.restart_fs()


def test_the_fs_server_needs_a_block_device():
    kernel = Kernel(Machine(), ipc="sel4")
    with pytest.raises(StorageError, match="cannot connect to blk"):
        start_fs(kernel, in_kernel=False)


def block_calls_per_fs_call(storage: Storage, args: list[str]) -> list[tuple[int, int]]:
    """(fs operation, block calls the fs server made for it) for each call fstest makes."""
    kernel = storage.kernel
    calls: list[list[int]] = []

    def observe(thread, number, regs) -> None:
        if number != Sys.IPC_CALL:
            return
        if thread.group.name == "fstest":
            calls.append([regs[1], 0])  # IPC_CALL(slot, mr0, ...): mr0 is the operation
        elif thread.group is storage.fs and calls:
            calls[-1][1] += 1

    kernel.syscall_observers.append(observe)
    try:
        fstest(storage, *args)
    finally:
        kernel.syscall_observers.remove(observe)
    return [(op, n) for op, n in calls]


def served(storage: Storage) -> tuple[int, int]:
    """The servers' own request counters (ub_calls_served): (fs, ramdisk)."""
    counts = []
    for name, base, group in (
        ("fs", FS_BASE, storage.fs),
        ("ramdisk", RAMDISK_BASE, storage.ramdisk),
    ):
        address, size = symbol(build_program(name, base=base), "ub_calls_served")
        raw = storage.kernel.machine.read_virtual(group.vmspace.table, address, size)
        counts.append(int.from_bytes(raw, "little"))
    return counts[0], counts[1]


def test_writes_reach_the_device_in_few_block_calls():
    """Write-through, coalesced: a 4 KiB write of a new block is its data plus the bitmap
    and inode blocks, which are neighbours (one call); a read of it is one call."""
    storage = new_storage("sel4")  # every block call is a syscall the kernel sees
    open_, truncate, write_, sync, close, read_ = 1, 5, 4, 6, 2, 3
    calls = block_calls_per_fs_call(storage, ["write", "f", "4096", "1"])
    assert calls == [(open_, 2), (truncate, 0), (write_, 2), (sync, 1), (close, 0)]
    fs_before, blk_before = served(storage)
    calls = block_calls_per_fs_call(storage, ["read", "f"])
    assert calls == [(open_, 0), (read_, 1), (close, 0)]
    assert served(storage) == (fs_before + 3, blk_before + 1)  # the servers count the same
    # 16 KiB of new blocks: one call for the data (4 contiguous blocks), one for metadata
    calls = block_calls_per_fs_call(storage, ["write", "g", "16384", "1"])
    assert (write_, 2) in calls


RAMDISK_PROBE = r"""
#include "ub.h"
#include "ub_ipc.h"
#include "ub_blk.h"

static void ask(const struct ub_conn *c, long op, long lba, long count)
{
    long mr[4] = {op, lba, count, 0};
    long r = ub_ipc_call(c, mr);
    ub_printf("%ld %ld %ld %ld: %ld %ld %ld %ld\n", op, lba, count, r, mr[0], mr[1], mr[2], mr[3]);
}

int main(void)
{
    struct ub_conn c;
    if (ub_ipc_connect(BLK_SERVICE, &c) < 0)
        return 1;
    long bad[][3] = {
        {99, 0, 1}, {0, 0, 1}, {BLK_READ, 0, 0}, {BLK_READ, 0, BLK_MAX_BLOCKS + 1},
        {BLK_READ, 0, -1}, {BLK_WRITE, -1, 1}, {BLK_WRITE, 1536, 1}, {BLK_WRITE, 1535, 2},
        {BLK_READ, 0x7fffffffffffffffL, 4}, {BLK_WRITE, 1, 0x7fffffffffffffffL},
    };
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ask(&c, bad[i][0], bad[i][1], bad[i][2]);
    ask(&c, BLK_INFO, 0, 0);
    ((char *)c.buf)[0] = 42;
    ask(&c, BLK_WRITE, 1532, 4);  /* the last four blocks: fine */
    ((char *)c.buf)[0] = 0;
    ask(&c, BLK_READ, 1532, 1);
    ub_printf("byte %d\n", ((char *)c.buf)[0]);
    return 0;
}
"""


def test_the_ramdisk_rejects_every_bad_request(storage, tmp_path: Path):
    source = tmp_path / "blkprobe.c"
    source.write_text(RAMDISK_PROBE)
    kernel = storage.kernel
    probe = kernel.spawn(build_program(source, base=FSTEST_BASE), ["blkprobe"])
    kernel.run(until=lambda: not probe.running)
    lines = console(probe).splitlines()
    assert probe.exit_status == 0, lines
    *rejected, info, wrote, readback, byte = lines
    assert len(rejected) == 10
    assert all(line.endswith(" 0: -22 0 0 0") for line in rejected), rejected
    assert info == "1 0 0 0: 0 4096 1536 0"
    assert (wrote, readback) == ("3 1532 4 0: 0 0 0 0", "2 1532 1 0: 0 0 0 0")
    assert byte == "byte 42"
    image = storage.disk_image()
    assert image[1532 * 4096] == 42 and len(image) == 1536 * 4096
