"""Crash consistency of the fs server (guest/servers/fs/recover.c): whatever a crash at
any instruction leaves on the disk, the next fs server mounts it and leaves a disk the
ubfs checker passes, with every file the crash did not touch intact.

A crash's disk is the disk before plus a prefix of the fs server's block writes
(underbridge.fs.crash), so the first test checks every instant of a workload by
checking every prefix; the suite's 1,200 writes are sampled (seeded), torn writes too
(a ramdisk killed inside one); and real kills at seeded simulated instants (the
supervisor's kill_at), in user space (sel4) and in kernel space (underbridge), check
the same end to end."""

from __future__ import annotations

import random

import pytest

from underbridge.fs import crash
from underbridge.fs.storage import FSTEST_BASE, Storage, console_text, start_storage
from underbridge.fs.ubfs import BLOCK_SIZE, INODE, INODE_SIZE, Ubfs
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

from .test_fs_server import pattern

MOUNTED = "fs: mounted blk: 1536 blocks, 384 inodes\n"
# (name, size, seed) per `fstest write`: a file past the direct blocks (an indirect
# table), a second one, the first rewritten shorter (its table freed), an empty one.
WORKLOAD = (("a", 70_000, 1), ("b", 5000, 2), ("a", 3000, 3), ("c", 0, 4))


def new_storage(mode: str) -> Storage:
    return start_storage(Kernel(Machine(), ipc=mode), in_kernel=mode == "underbridge")


def write(storage: Storage, name: str, size: int, seed: int) -> None:
    client = storage.run_client("fstest", ["write", name, str(size), str(seed)])
    assert bytes(client.console) == f"fstest: wrote {name} {size}\n".encode()


def recorded(storage: Storage, writes) -> tuple[bytes, list[crash.BlockWrite], list[int]]:
    """(disk before, the fs server's block writes, how many had been made after each
    `fstest write` of `writes`)."""
    before = storage.disk_image()
    ends = []
    with crash.BlockRecorder(storage) as recorder:
        for name, size, seed in writes:
            write(storage, name, size, seed)
            ends.append(len(recorder.writes))
    return before, recorder.writes, ends


def raw_problems(image: bytes) -> list[str]:
    return Ubfs(image).check()


def test_a_crash_after_any_block_write_recovers():
    """Every instant of WORKLOAD: the files of the writes done before it are whole, the
    file being written is absent or any size, and recovery writes the disk exactly when
    the crash left it inconsistent."""
    storage = new_storage("sel4")
    before, writes, ends = recorded(storage, WORKLOAD)
    assert len(writes) == ends[-1] == 25
    inconsistent = 0
    for done in range(len(writes) + 1):
        image = crash.crash_image(before, writes, done)
        result = crash.remount(storage, image)
        assert result.problems == [], (done, result.console)
        assert result.console.startswith(MOUNTED)
        assert result.recovered == bool(raw_problems(image)), done
        assert result.recovered or result.image == image  # a consistent disk is not written
        inconsistent += result.recovered
        finished = sum(end <= done for end in ends)
        expected = {name: (size, seed) for name, size, seed in WORKLOAD[:finished]}
        in_flight = WORKLOAD[finished][0] if finished < len(WORKLOAD) else None
        disk = Ubfs(result.image)
        for name, (size, seed) in expected.items():
            if name != in_flight:
                assert disk.read(name) == pattern(seed, size), (done, name)
        assert set(disk.files()) - set(expected) <= {in_flight}
    assert inconsistent == 5  # crashes that needed recovery; the rest were consistent


@pytest.fixture(scope="module")
def suite_run() -> tuple[Storage, bytes, list[crash.BlockWrite], bytes]:
    """A storage with a file `keep`, the disk before `fstest suite`, the suite's block
    writes (creates, deletes, truncates, files with double-indirect tables, a full
    disk), and keep's content."""
    storage = new_storage("sel4")
    write(storage, "keep", 70_000, 9)
    before = storage.disk_image()
    with crash.BlockRecorder(storage) as recorder:
        client = storage.run_client("fstest", ["suite"])
    assert bytes(client.console) == b"fstest: ok\n"
    return storage, before, recorder.writes, Ubfs(before).read("keep")


def test_the_suite_crashed_at_seeded_block_writes_recovers(suite_run):
    storage, before, writes, keep = suite_run
    assert len(writes) > 1000
    rng = random.Random(15)
    for done in sorted(rng.sample(range(len(writes) + 1), 30)):
        result = crash.remount(storage, crash.crash_image(before, writes, done))
        assert result.problems == [], (done, result.console)
        assert Ubfs(result.image).read("keep") == keep


def test_a_torn_block_write_recovers(suite_run):
    """A ramdisk killed inside a write stores a prefix of its bytes (8-byte words, as
    its memcpy moves them)."""
    storage, before, writes, keep = suite_run
    rng = random.Random(16)
    for done in sorted(rng.sample(range(len(writes)), 30)):
        torn = 8 * rng.randrange(1, len(writes[done].data) // 8)
        result = crash.remount(storage, crash.crash_image(before, writes, done, torn))
        assert result.problems == [], (done, torn, result.console)
        assert Ubfs(result.image).read("keep") == keep


@pytest.mark.parametrize("mode", ["sel4", "underbridge"])
def test_the_fs_server_killed_at_seeded_instants_recovers(mode):
    """Kill the fs server at seeded simulated instants of a `fstest suite` run (the
    supervisor stops the CPU there: inside a request, a block call, a gate call in
    kernel space); the disk the restarted server leaves once it serves again checks
    clean, and the file written before is whole."""
    storage = new_storage(mode)
    kernel, supervisor = storage.kernel, storage.supervisor
    write(storage, "keep", 20_000, 9)
    keep = Ubfs(storage.disk_image()).read("keep")
    start = kernel.machine.clock()
    for name, size, seed in WORKLOAD:
        write(storage, name, size, seed)
    span = kernel.machine.clock() - start
    rng = random.Random(17)
    for _ in range(4):
        client = kernel.spawn(build_program("fstest", base=FSTEST_BASE), ["fstest", "suite"])
        restarts = len(supervisor.restarts)
        supervisor.kill_at("fs", kernel.machine.clock() + rng.randrange(span))
        kernel.run(until=lambda n=restarts: len(supervisor.restarts) > n)
        restart = supervisor.restarts[-1]
        assert restart.ending == "exited -9" and len(supervisor.restarts) == restarts + 1
        kernel.run(until=lambda r=restart: r.serving_at is not None)
        disk = Ubfs(storage.disk_image())  # as the new server's mount left it
        assert disk.check() == [], console_text(storage.fs)
        assert disk.read("keep") == keep
        kernel.run(until=lambda c=client: not c.running)


# ---- what recovery does to each kind of damage a crash leaves ----------------------------


def damaged(storage: Storage, change) -> crash.Remount:
    """Remount on the disk with `change(image, disk)` applied to a copy of it."""
    image = bytearray(storage.disk_image())
    change(image, Ubfs(bytes(image)))
    return crash.remount(storage, bytes(image))


def inode_at(disk: Ubfs, name: str) -> int:
    inum = next(inum for _, inum, raw in disk.entries() if raw.startswith(name.encode() + b"\0"))
    return disk.sb.inode_start * BLOCK_SIZE + inum * INODE_SIZE


def set_inode(image: bytearray, disk: Ubfs, name: str, **fields: int) -> None:
    at = inode_at(disk, name)
    kind, nlink, pad, size, *rest = INODE.unpack_from(image, at)
    values = {"type": kind, "nlink": nlink, "size": size} | fields
    INODE.pack_into(image, at, values["type"], values["nlink"], pad, values["size"], *rest)


def recovered_line(entries=0, inodes=0, links=0, pointers=0, tails=0, bits=0) -> str:
    return (
        f"{MOUNTED}fs: recovered: {entries} entries, {inodes} inodes, {links} links, "
        f"{pointers} pointers, {tails} tails, {bits} bitmap bits\n"
    )


@pytest.fixture
def two_files() -> Storage:
    storage = new_storage("sel4")
    write(storage, "x", 5000, 1)  # two blocks
    write(storage, "y", 100, 2)
    return storage


def test_an_entry_naming_a_freed_inode_is_cleared(two_files):
    result = damaged(two_files, lambda image, disk: set_inode(image, disk, "x", type=0))
    assert result.console == recovered_line(entries=1, bits=2)  # x's blocks freed
    assert result.problems == [] and Ubfs(result.image).files() == {"y": 100}


def test_a_file_no_entry_names_is_freed(two_files):
    def unname(image: bytearray, disk: Ubfs) -> None:
        offset, _, _ = next(e for e in disk.entries() if e[2].startswith(b"x\0"))
        block = next(p.block for p in disk.pointers(disk.inode(1)) if p.index == 0)
        at = block * BLOCK_SIZE + offset
        image[at : at + 64] = bytes(64)

    result = damaged(two_files, unname)
    assert result.console == recovered_line(inodes=1, bits=2)
    assert result.problems == [] and Ubfs(result.image).files() == {"y": 100}


def test_blocks_past_a_size_are_dropped_and_the_tail_zeroed(two_files):
    result = damaged(two_files, lambda image, disk: set_inode(image, disk, "x", size=100))
    assert result.console == recovered_line(pointers=1, tails=1, bits=1)
    disk = Ubfs(result.image)
    assert result.problems == [] and disk.read("x") == pattern(1, 100)


def test_a_wrong_link_count_is_set(two_files):
    result = damaged(two_files, lambda image, disk: set_inode(image, disk, "y", nlink=0))
    assert result.console == recovered_line(links=1)
    assert result.problems == [] and Ubfs(result.image).read("y") == pattern(2, 100)


def test_a_consistent_disk_is_mounted_without_a_write(two_files):
    image = two_files.disk_image()
    result = crash.remount(two_files)
    assert result.console == MOUNTED and result.image == image and result.problems == []
