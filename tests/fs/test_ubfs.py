"""The Python ubfs reader and checker on images built here, by a small Python mkfs that
lays files out the way the fs server does; and every invariant's corruption caught."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underbridge.fs import ubfs
from underbridge.fs.ubfs import BLOCK_SIZE, CorruptUbfs, NotUbfs, Ubfs, UbfsError

PTRS = ubfs.PTRS_PER_BLOCK


@dataclass
class Node:
    """An inode being built: its pointers as a dict from file block to disk block."""

    inum: int
    type: int
    size: int = 0
    nlink: int = 1
    blocks: dict[int, int] = field(default_factory=dict)


class Builder:
    """mkfs and file creation in Python, with mkfs.c's geometry: blocks are handed out in
    order, all-zero file blocks are left as holes, tables are made as needed."""

    def __init__(self, blocks: int = 96) -> None:
        inodes = -(-blocks // ubfs.BLOCKS_PER_INODE)
        self.bitmap_blocks = -(-blocks // ubfs.BITS_PER_BLOCK)
        self.inode_blocks = -(-inodes // ubfs.INODES_PER_BLOCK)
        self.inode_start = 1 + self.bitmap_blocks
        self.data_start = self.inode_start + self.inode_blocks
        self.inode_count = self.inode_blocks * ubfs.INODES_PER_BLOCK
        self.block_count = blocks
        self.image = bytearray(blocks * BLOCK_SIZE)
        self.next_block = self.data_start
        self.nodes = [Node(ubfs.ROOT_INODE, ubfs.TYPE_DIR)]
        self.directory = bytearray()

    def alloc(self) -> int:
        if self.next_block >= self.block_count:
            raise ValueError("the test image is full")
        self.next_block += 1
        return self.next_block - 1

    def put(self, node: Node, content: bytes) -> None:
        node.size = len(content)
        for index in range(0, -(-len(content) // BLOCK_SIZE)):
            chunk = content[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
            if any(chunk):
                block = node.blocks[index] = self.alloc()
                self.image[block * BLOCK_SIZE : block * BLOCK_SIZE + len(chunk)] = chunk

    def add(self, name: str, content: bytes) -> int:
        node = Node(len(self.nodes) + 1, ubfs.TYPE_FILE)
        self.nodes.append(node)
        self.put(node, content)
        self.directory += struct.pack("<I60s", node.inum, name.encode())
        return node.inum

    def build(self) -> bytearray:
        self.put(self.nodes[0], bytes(self.directory))
        for node in self.nodes:
            self._write_inode(node)
        for block in range(self.next_block):
            self.image[BLOCK_SIZE + block // 8] |= 1 << block % 8
        self.image[: ubfs.SUPER.size] = ubfs.SUPER.pack(
            ubfs.MAGIC,
            BLOCK_SIZE,
            self.block_count,
            1,
            self.bitmap_blocks,
            self.inode_start,
            self.inode_blocks,
            self.inode_count,
            self.data_start,
            ubfs.ROOT_INODE,
        )
        return self.image

    def _write_inode(self, node: Node) -> None:
        direct = [node.blocks.get(i, 0) for i in range(ubfs.NDIRECT)]
        indirect = self._table(
            {
                i - ubfs.NDIRECT: b
                for i, b in node.blocks.items()
                if ubfs.NDIRECT <= i < ubfs.NDIRECT + PTRS
            },
            1,
        )
        first = ubfs.NDIRECT + PTRS
        double = self._table({i - first: b for i, b in node.blocks.items() if i >= first}, 2)
        offset = self.inode_start * BLOCK_SIZE + node.inum * ubfs.INODE_SIZE
        self.image[offset : offset + ubfs.INODE_SIZE] = ubfs.INODE.pack(
            node.type, node.nlink, 0, node.size, *direct, indirect, double
        )

    def _table(self, entries: dict[int, int], level: int) -> int:
        """A table of `level` for entries {index below it: data block}; 0 if empty."""
        if not entries:
            return 0
        span = PTRS ** (level - 1)
        slots = [0] * PTRS
        for slot in sorted({index // span for index in entries}):
            below = {i % span: b for i, b in entries.items() if i // span == slot}
            slots[slot] = below[0] if level == 1 else self._table(below, level - 1)
        block = self.alloc()
        self.image[block * BLOCK_SIZE : (block + 1) * BLOCK_SIZE] = ubfs.POINTERS.pack(*slots)
        return block


def image_of(files: dict[str, bytes], blocks: int = 96) -> bytearray:
    builder = Builder(blocks)
    for name, content in files.items():
        builder.add(name, content)
    return builder.build()


SPARSE = bytes(5_000_000) + b"end"  # data only past the double-indirect boundary
FILES = {
    "empty": b"",
    "tiny": b"hello",
    "block": bytes(range(256)) * 16,
    "holes": b"a" + bytes(3 * BLOCK_SIZE) + b"b",  # the middle blocks are holes
    "indirect": bytes(i % 251 for i in range(20 * BLOCK_SIZE + 7)),
    "sparse": SPARSE,
}


# ---- reading --------------------------------------------------------------------------


def test_an_empty_file_system_is_consistent():
    disk = Ubfs(image_of({}))
    assert disk.files() == {}
    assert disk.check() == []


def test_files_read_back_through_direct_indirect_and_double_indirect_pointers():
    disk = Ubfs(image_of(FILES))
    assert disk.files() == {name: len(content) for name, content in FILES.items()}
    for name, content in FILES.items():
        assert disk.read(name) == content
    assert disk.check() == []


def test_the_geometry_of_the_real_ramdisk_is_fs_cs():
    builder = Builder(1536)
    assert (
        builder.bitmap_blocks,
        builder.inode_blocks,
        builder.inode_count,
        builder.data_start,
    ) == (1, 12, 384, 14)
    assert Ubfs(builder.build()).check() == []


def test_missing_files_and_corrupt_pointers_raise():
    image = image_of({"f": b"x" * 10})
    with pytest.raises(KeyError):
        Ubfs(image).read("g")
    set_u32(image, inode_offset(Ubfs(image), 2) + 16, 2)  # direct[0] -> the inode table
    with pytest.raises(CorruptUbfs):
        Ubfs(image).read("f")


@pytest.mark.parametrize(
    "change",
    [
        lambda image: image.__setitem__(slice(0, 8), b"NOTUBFS!"),
        lambda image: set_u32(image, 8, 512),  # block size
        lambda image: set_u32(image, 12, 10_000),  # more blocks than the image
        lambda image: set_u32(image, 16, 0),  # the bitmap on the superblock
        lambda image: set_u32(image, 24, 1),  # inode table over the bitmap
        lambda image: set_u32(image, 32, 10_000),  # more inodes than their blocks hold
        lambda image: set_u32(image, 36, 2),  # data over the inode table
        lambda image: set_u32(image, 40, 2),  # another root inode
    ],
    ids=[
        "magic",
        "block size",
        "block count",
        "bitmap",
        "inode table",
        "inode count",
        "data start",
        "root",
    ],
)
def test_an_impossible_superblock_is_not_ubfs(change):
    image = image_of({})
    change(image)
    with pytest.raises(NotUbfs) as caught:
        Ubfs(image)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, UbfsError)


def test_short_and_blank_images_are_not_ubfs():
    for image in (b"", b"UBFS0001", bytes(96 * BLOCK_SIZE)):
        with pytest.raises(NotUbfs):
            Ubfs(image)


# ---- corruptions --------------------------------------------------------------------------


def set_u32(image: bytearray, offset: int, value: int) -> None:
    image[offset : offset + 4] = struct.pack("<I", value)


def inode_offset(disk: Ubfs, inum: int) -> int:
    return disk.sb.inode_start * BLOCK_SIZE + inum * ubfs.INODE_SIZE


def flip_bit(disk: Ubfs, image: bytearray, block: int) -> None:
    image[disk.sb.bitmap_start * BLOCK_SIZE + block // 8] ^= 1 << block % 8


def direct(disk: Ubfs, name: str, index: int = 0) -> int:
    inum = next(inum for _, inum, raw in disk.entries() if raw.rstrip(b"\0") == name.encode())
    return disk.inode(inum).direct[index]


def entry_offset(disk: Ubfs, name: str) -> int:
    """Where a file's directory entry is in the image."""
    root = disk.inode(ubfs.ROOT_INODE)
    offset = next(off for off, _, raw in disk.entries() if raw.rstrip(b"\0") == name.encode())
    return root.direct[offset // BLOCK_SIZE] * BLOCK_SIZE + offset % BLOCK_SIZE


Corruption = Callable[[Ubfs, bytearray], None]
# inodes: root 1, then FILES in order from 2 ("empty" 2, "tiny" 3, "block" 4, ...)
CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "used block marked free": (
        lambda d, i: flip_bit(d, i, direct(d, "block")),
        "is marked free but inode 4",
    ),
    "free block marked used": (
        lambda d, i: flip_bit(d, i, d.sb.block_count - 1),
        "nothing points at it",
    ),
    "metadata marked free": (lambda d, i: flip_bit(d, i, 1), "metadata block 1"),
    "bit past the end": (lambda d, i: flip_bit(d, i, d.sb.block_count), "past the last"),
    "shared block": (
        lambda d, i: set_u32(i, inode_offset(d, 3) + 16, direct(d, "block")),
        "pointed at twice",
    ),
    "pointer into metadata": (
        lambda d, i: set_u32(i, inode_offset(d, 4) + 16, 2),
        "outside the data area",
    ),
    "pointer past the disk": (
        lambda d, i: set_u32(i, inode_offset(d, 4) + 16, 10**6),
        "outside the data area",
    ),
    "table past the disk": (
        lambda d, i: set_u32(i, inode_offset(d, 6) + 64, 10**6),
        "table points at block",
    ),
    "data past the size": (
        lambda d, i: set_u32(i, inode_offset(d, 6) + 8, 100),
        "past its size 100",
    ),
    "dirty tail": (
        lambda d, i: i.__setitem__(direct(d, "tiny") * BLOCK_SIZE + 5, 1),
        "bytes past its size 5 are not zero",
    ),
    "entry of a free inode": (
        lambda d, i: set_u32(i, entry_offset(d, "tiny"), 20),
        "inode 20 is not a file",
    ),
    "entry of the root": (
        lambda d, i: set_u32(i, entry_offset(d, "tiny"), 1),
        "inode 1 is not a file's",
    ),
    "entry past the table": (
        lambda d, i: set_u32(i, entry_offset(d, "tiny"), 10**6),
        "is not a file's",
    ),
    "duplicate name": (
        lambda d, i: i.__setitem__(
            slice(entry_offset(d, "tiny") + 4, entry_offset(d, "tiny") + 10), b"block\0"
        ),
        "appears twice",
    ),
    "slash in a name": (
        lambda d, i: i.__setitem__(entry_offset(d, "tiny") + 5, ord("/")),
        "bad name",
    ),
    "unterminated name": (
        lambda d, i: i.__setitem__(
            slice(entry_offset(d, "tiny") + 4, entry_offset(d, "tiny") + 64), b"z" * 60
        ),
        "bad name",
    ),
    "orphan": (lambda d, i: set_u32(i, entry_offset(d, "tiny"), 0), "but 0 entries"),
    "nlink": (lambda d, i: i.__setitem__(inode_offset(d, 3) + 2, 2), "nlink 2"),
    "root not a directory": (
        lambda d, i: i.__setitem__(inode_offset(d, 1), ubfs.TYPE_FILE),
        "root inode",
    ),
    "inode 0 in use": (
        lambda d, i: i.__setitem__(inode_offset(d, 0), ubfs.TYPE_FILE),
        "inode 0 is in use",
    ),
    "unknown type": (lambda d, i: i.__setitem__(inode_offset(d, 3), 7), "has type 7"),
    "directory size": (lambda d, i: set_u32(i, inode_offset(d, 1) + 8, 65), "not whole entries"),
    "huge size": (
        lambda d, i: i.__setitem__(
            slice(inode_offset(d, 3) + 8, inode_offset(d, 3) + 16), b"\xff" * 8
        ),
        "beyond any file",
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_broken_invariant_is_reported(name):
    corrupt, expected = CORRUPTIONS[name]
    image = image_of(FILES)
    corrupt(Ubfs(image), image)
    problems = Ubfs(image).check()
    assert any(expected in problem for problem in problems), problems


# ---- properties ---------------------------------------------------------------------------

NAMES = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/"),
    min_size=1,
    max_size=ubfs.DIRENT_NAME - 1,
)
CONTENT = st.one_of(
    st.binary(max_size=3 * BLOCK_SIZE),
    st.tuples(st.integers(0, 16 * BLOCK_SIZE), st.binary(min_size=1, max_size=100)).map(
        lambda gap_tail: bytes(gap_tail[0]) + gap_tail[1]
    ),  # a hole, then data
)
FILE_SETS = st.dictionaries(NAMES, CONTENT, max_size=6)
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(FILE_SETS)
def test_any_file_set_reads_back_and_checks_clean(files):
    disk = Ubfs(image_of(files))
    assert disk.check() == []
    assert disk.files() == {name: len(content) for name, content in files.items()}
    for name, content in files.items():
        assert disk.read(name) == content


@QUICK
@given(FILE_SETS, st.data())
def test_every_bitmap_flip_is_detected(files, data):
    """A bit is wrong either way: metadata marked free, a leak, a block in use marked
    free, or a bit past the last block."""
    image = image_of(files)
    disk = Ubfs(image)
    flip_bit(disk, image, data.draw(st.integers(0, ubfs.BITS_PER_BLOCK - 1), label="bit"))
    assert Ubfs(image).check() != []


@QUICK
@given(FILE_SETS, st.data())
def test_a_stolen_block_is_detected(files, data):
    """Point one file's block at another's (or at its own table): two owners, and the
    old block is now leaked."""
    image = image_of({**files, "victim": b"v" * BLOCK_SIZE, "thief": b"t" * BLOCK_SIZE})
    disk = Ubfs(image)
    thief = next(inum for _, inum, raw in disk.entries() if raw.rstrip(b"\0") == b"thief")
    owned = [
        p.block
        for inode in disk.inodes()
        if inode.used and inode.inum != thief
        for p in disk.pointers(inode)
    ]
    set_u32(image, inode_offset(disk, thief) + 16, data.draw(st.sampled_from(owned)))
    problems = Ubfs(image).check()
    assert any("pointed at twice" in p for p in problems)
    assert any("nothing points at it" in p for p in problems)


@QUICK
@given(FILE_SETS, st.data())
def test_random_metadata_damage_never_crashes_the_checker(files, data):
    """Any bytes in the bitmap, inode table or directory: check() still returns a list."""
    image = image_of(files)
    disk = Ubfs(image)
    metadata = range(BLOCK_SIZE, disk.sb.data_start * BLOCK_SIZE)
    root_dir = disk.inode(ubfs.ROOT_INODE).direct[0]
    targets = [metadata]
    if root_dir:
        targets.append(range(root_dir * BLOCK_SIZE, (root_dir + 1) * BLOCK_SIZE))
    for _ in range(data.draw(st.integers(1, 8), label="writes")):
        where = data.draw(st.sampled_from(targets), label="area")
        offset = data.draw(st.integers(where.start, where.stop - 4), label="offset")
        image[offset : offset + 4] = data.draw(st.binary(min_size=4, max_size=4))
    assert isinstance(Ubfs(image).check(), list)
