"""Crashing the storage stack on purpose, and looking at what a crash leaves on the disk.

For the tests of crash consistency (guest/servers/fs/recover.c), a crash by block
writes (a crash at a simulated instant is the supervisor's kill_at):

`BlockRecorder` records every BLK_WRITE the fs server makes (its block number and the
bytes, read out of the fs server's block buffer as it makes the call). The device
changes only by those writes, each done whole by the ramdisk, so the disk an fs crash
at ANY instruction leaves is the disk before the run plus a prefix of them
(`crash_image`): checking every prefix checks every instant. A ramdisk killed inside a
write leaves a prefix of that write's bytes too (`torn`). Recording needs the fs
server's block calls to be syscalls the kernel sees, that is, user-space servers; the
writes are the fs binary's, the same in every placement.

`load_image` puts a disk image back into the ramdisk's memory behind the servers'
backs (only between requests: nothing may be in flight), and `remount` restarts the
fs server on it, which recovers it at mount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from underbridge.abi.syscalls import Sys
from underbridge.fs.storage import FS_BASE, Storage, StorageError, console_text
from underbridge.fs.ubfs import BLOCK_SIZE, Ubfs
from underbridge.guestbuild.toolchain import build_program, symbol
from underbridge.kernel.objects.thread import Thread

BLK_WRITE = 3  # ub_blk.h
PAGE = 4096


@dataclass(frozen=True, slots=True)
class BlockWrite:
    """One BLK_WRITE call: `data` (whole blocks) stored from block `lba` on."""

    lba: int
    data: bytes


@dataclass(eq=False)
class BlockRecorder:
    """Records the fs server's BLK_WRITE calls while installed (a context manager)."""

    storage: Storage
    note: Callable[[], int] | None = None  # read at each write: e.g. an app's progress
    writes: list[BlockWrite] = field(default_factory=list)
    notes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.storage.in_kernel:
            raise StorageError("block writes are recorded only from user-space servers")
        self._conn_at, _ = symbol(build_program("fs", base=FS_BASE), "blk")

    def __enter__(self) -> BlockRecorder:
        self.storage.kernel.syscall_observers.append(self._observe)
        return self

    def __exit__(self, *_: object) -> None:
        self.storage.kernel.syscall_observers.remove(self._observe)

    def _observe(self, thread: Thread, number: int, regs: tuple[int, ...]) -> None:
        # IPC_CALL(slot, mr0, mr1, mr2, ...): {BLK_WRITE, lba, count} on the block
        # connection, whose buffer `struct ub_conn blk` (slot, buf, ...) names.
        if number != Sys.IPC_CALL or thread.group is not self.storage.fs:
            return
        if regs[1] != BLK_WRITE:
            return
        kernel, table = self.storage.kernel, thread.group.vmspace.table
        raw = kernel.machine.read_virtual(table, self._conn_at, 16)
        buffer = int.from_bytes(raw[8:16], "little")
        data = kernel.machine.read_virtual(table, buffer, regs[3] * BLOCK_SIZE)
        self.writes.append(BlockWrite(regs[2], bytes(data)))
        if self.note is not None:
            self.notes.append(self.note())


def apply(image: bytearray, write: BlockWrite, length: int | None = None) -> None:
    """Store `write` (its first `length` bytes: a torn write) into `image`."""
    data = write.data if length is None else write.data[:length]
    start = write.lba * BLOCK_SIZE
    image[start : start + len(data)] = data


def crash_image(before: bytes, writes: list[BlockWrite], done: int, torn: int = 0) -> bytes:
    """The disk after the first `done` writes, and `torn` bytes of the next one."""
    image = bytearray(before)
    for write in writes[:done]:
        apply(image, write)
    if torn:
        apply(image, writes[done], torn)
    return bytes(image)


def load_image(storage: Storage, image: bytes) -> None:
    """Make the ramdisk's disk `image` (its pages that differ), between requests."""
    if len(image) != storage.disk_size:
        raise StorageError(f"an image of {len(image)} bytes for a disk of {storage.disk_size}")
    current = storage.disk_image()
    table = storage.ramdisk.vmspace.table
    for offset in range(0, len(image), PAGE):
        page = image[offset : offset + PAGE]
        if page != current[offset : offset + PAGE]:
            physical = table.translate(storage.disk_at + offset)
            if physical is None:
                raise StorageError(f"disk page at {offset:#x} is not mapped")
            storage.kernel.machine.mem.write(physical, page)


@dataclass(frozen=True, slots=True)
class Remount:
    """What a restarted fs server said at mount, and what the checker finds after it."""

    console: str
    problems: list[str]
    image: bytes

    @property
    def recovered(self) -> bool:
        return "fs: recovered:" in self.console


def remount(storage: Storage, image: bytes | None = None) -> Remount:
    """Restart the fs server (on `image`, if given); check the disk it leaves."""
    if image is not None:
        storage.kernel.kill(storage.fs)  # nothing may write the disk while it changes
        load_image(storage, image)  # before its supervisor starts the next one
    fs = storage.restart_fs()
    after = storage.disk_image()
    return Remount(console_text(fs), Ubfs(after).check(), after)
