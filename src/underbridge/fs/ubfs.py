"""A reader and checker of the ubfs on-disk format (guest/servers/fs/ubfs.h).

The constants and layouts below mirror ubfs.h's #defines and structs; keep the two in
step. Everything is little-endian, in 4096-byte blocks:

  block 0                    superblock
  bitmap_start ..            block bitmap: bit b (byte b // 8, bit b % 8) set = used
  inode_start ..             inode table, 32 inodes of 128 bytes per block
  data_start .. block_count  data and indirect blocks

`Ubfs(image)` only reads: it never changes the image it is given (bytes). It accepts
an image whose superblock is ubfs's and whose geometry is possible (the magic, the block
size, regions in order inside the image); anything else raises NotUbfs. Past that, the
image may be corrupt: `check()` reports every broken invariant instead of raising, and
`read()` raises CorruptUbfs when the file it reads points outside the data area.

`check()` verifies ubfs.h's invariants (an fsck):
  - every block below data_start is marked used, and no bit past block_count is set;
  - inode 0 is free; the root inode is a directory; every other used inode is a file;
  - every block pointer of a used inode (data or table) lies in the data area, and no
    block is pointed at twice (within one inode or across two);
  - the bitmap marks exactly the blocks that used inodes point at: no leaks, no block
    in use but free;
  - no data block sits at or past the end of its file (tables may be empty), and the
    bytes of a file's last block past its size are zero;
  - the directory's size is whole entries; each entry names a file inode, with a
    non-empty NUL-terminated name without '/', unique; each file is named by exactly
    as many entries as its nlink says (always 1: there are no hard links);
A consistent image gives an empty list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

BLOCK_SIZE = 4096
MAGIC = b"UBFS0001"
ROOT_INODE = 1
NDIRECT = 12
PTRS_PER_BLOCK = BLOCK_SIZE // 4
INODE_SIZE = 128
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
DIRENT_SIZE = 64
DIRENT_NAME = 60
BLOCKS_PER_INODE = 4
BITS_PER_BLOCK = BLOCK_SIZE * 8
TYPE_FREE, TYPE_FILE, TYPE_DIR = 0, 1, 2
MAX_FILE_BLOCKS = NDIRECT + PTRS_PER_BLOCK + PTRS_PER_BLOCK * PTRS_PER_BLOCK
MAX_FILE_BYTES = MAX_FILE_BLOCKS * BLOCK_SIZE

SUPER = struct.Struct("<8s9I")  # struct ubfs_super
INODE = struct.Struct(f"<HHIQ{NDIRECT}III{INODE_SIZE - 72}x")  # struct ubfs_inode
DIRENT = struct.Struct(f"<I{DIRENT_NAME}s")  # struct ubfs_dirent
POINTERS = struct.Struct(f"<{PTRS_PER_BLOCK}I")  # an indirect block

assert INODE.size == INODE_SIZE and DIRENT.size == DIRENT_SIZE


class UbfsError(ValueError):
    """An image cannot be read as ubfs."""


class NotUbfs(UbfsError):
    """The image holds no ubfs file system: no magic, or an impossible superblock."""


class CorruptUbfs(UbfsError):
    """A file's block pointers lead outside the data area."""


@dataclass(frozen=True, slots=True)
class Superblock:
    magic: bytes
    block_size: int
    block_count: int
    bitmap_start: int
    bitmap_blocks: int
    inode_start: int
    inode_blocks: int
    inode_count: int
    data_start: int
    root_inode: int

    def problem(self, image_blocks: int) -> str | None:
        """Why this geometry is impossible for an image of `image_blocks` blocks, or None
        (the same conditions as geometry_ok in guest/servers/fs/mkfs.c)."""
        checks = (
            (self.magic == MAGIC, f"magic {self.magic!r}, not {MAGIC!r}"),
            (self.block_size == BLOCK_SIZE, f"block size {self.block_size}"),
            (
                self.block_count <= image_blocks,
                f"{self.block_count} blocks in an image of {image_blocks}",
            ),
            (self.bitmap_start >= 1, "the bitmap overlaps the superblock"),
            (
                self.bitmap_blocks * BITS_PER_BLOCK >= self.block_count,
                "the bitmap is too small for the blocks",
            ),
            (
                self.inode_start >= self.bitmap_start + self.bitmap_blocks,
                "the inode table overlaps the bitmap",
            ),
            (
                ROOT_INODE < self.inode_count <= self.inode_blocks * INODES_PER_BLOCK,
                f"{self.inode_count} inodes in {self.inode_blocks} blocks",
            ),
            (
                self.data_start >= self.inode_start + self.inode_blocks,
                "the data area overlaps the inode table",
            ),
            (self.data_start < self.block_count, "no data area"),
            (self.root_inode == ROOT_INODE, f"root inode {self.root_inode}"),
        )
        return next((why for ok, why in checks if not ok), None)


@dataclass(frozen=True, slots=True)
class Inode:
    inum: int
    type: int
    nlink: int
    size: int
    direct: tuple[int, ...]
    indirect: int
    double_indirect: int

    @property
    def used(self) -> bool:
        return self.type != TYPE_FREE

    @property
    def block_span(self) -> int:
        """How many file blocks its size covers (ceil(size / BLOCK_SIZE))."""
        return -(-self.size // BLOCK_SIZE)


@dataclass(frozen=True, slots=True)
class Pointer:
    """One non-zero block pointer of an inode: to a data block at file block `index`, or
    to a table (index None)."""

    block: int
    index: int | None

    @property
    def is_table(self) -> bool:
        return self.index is None


class Ubfs:
    def __init__(self, image: bytes) -> None:
        if len(image) < BLOCK_SIZE:
            raise NotUbfs(f"an image of {len(image)} bytes has no superblock")
        self.image = bytes(image)
        self.sb = Superblock(*SUPER.unpack_from(self.image, 0))
        why = self.sb.problem(len(self.image) // BLOCK_SIZE)
        if why is not None:
            raise NotUbfs(f"not a ubfs image: {why}")

    # -- raw structures ---------------------------------------------------------------

    def block(self, number: int) -> bytes:
        if not 0 <= number < self.sb.block_count:
            raise CorruptUbfs(f"block {number} is outside the file system")
        return self.image[number * BLOCK_SIZE : (number + 1) * BLOCK_SIZE]

    def is_data_block(self, number: int) -> bool:
        return self.sb.data_start <= number < self.sb.block_count

    def marked_used(self, number: int) -> bool:
        byte = self.sb.bitmap_start * BLOCK_SIZE + number // 8
        return bool(self.image[byte] >> (number % 8) & 1)

    def inode(self, inum: int) -> Inode:
        if not 0 <= inum < self.sb.inode_count:
            raise CorruptUbfs(f"inode {inum} is outside the inode table")
        offset = self.sb.inode_start * BLOCK_SIZE + inum * INODE_SIZE
        kind, nlink, _, size, *rest = INODE.unpack_from(self.image, offset)
        return Inode(
            inum, kind, nlink, size, tuple(rest[:NDIRECT]), rest[NDIRECT], rest[NDIRECT + 1]
        )

    def inodes(self) -> Iterator[Inode]:
        return (self.inode(inum) for inum in range(self.sb.inode_count))

    def pointers(self, inode: Inode) -> Iterator[Pointer]:
        """Every non-zero pointer of `inode`, each table before the pointers it holds.
        A table outside the data area is yielded but not followed."""
        for index, block in enumerate(inode.direct):
            if block:
                yield Pointer(block, index)
        yield from self._table(inode.indirect, 1, NDIRECT)
        yield from self._table(inode.double_indirect, 2, NDIRECT + PTRS_PER_BLOCK)

    def _table(self, block: int, level: int, first: int) -> Iterator[Pointer]:
        if not block:
            return
        yield Pointer(block, None)
        if not self.is_data_block(block):
            return
        span = PTRS_PER_BLOCK ** (level - 1)  # file blocks each entry covers
        for slot, entry in enumerate(POINTERS.unpack(self.block(block))):
            if not entry:
                continue
            if level == 1:
                yield Pointer(entry, first + slot)
            else:
                yield from self._table(entry, level - 1, first + slot * span)

    def data(self, inode: Inode) -> bytes:
        """The inode's content, `size` bytes, holes as zeros."""
        span = inode.block_span
        if span > MAX_FILE_BLOCKS:
            raise CorruptUbfs(f"inode {inode.inum}: size {inode.size} is beyond any file")
        content = bytearray(span * BLOCK_SIZE)
        for pointer in self.pointers(inode):
            if not self.is_data_block(pointer.block):
                raise CorruptUbfs(
                    f"inode {inode.inum}: pointer to block {pointer.block}, outside the data area"
                )
            if pointer.index is not None and pointer.index < span:
                start = pointer.index * BLOCK_SIZE
                content[start : start + BLOCK_SIZE] = self.block(pointer.block)
        return bytes(content[: inode.size])

    def entries(self) -> list[tuple[int, int, bytes]]:
        """The root directory's used entries in order: (offset in the directory, inum,
        raw name). Read block by block, so a corrupt size costs nothing (holes hold no
        entries)."""
        root = self.inode(ROOT_INODE)
        found: list[tuple[int, int, bytes]] = []  # (offset, inum, name)
        for pointer in self.pointers(root):
            if pointer.index is None or pointer.index >= root.block_span:
                continue
            if not self.is_data_block(pointer.block):
                raise CorruptUbfs(
                    f"the directory points at block {pointer.block}, outside the data area"
                )
            start = pointer.index * BLOCK_SIZE
            count = min(BLOCK_SIZE, root.size - start) // DIRENT_SIZE
            block = self.block(pointer.block)
            for slot in range(count):
                inum, raw = DIRENT.unpack_from(block, slot * DIRENT_SIZE)
                if inum:
                    found.append((start + slot * DIRENT_SIZE, inum, raw))
        return sorted(found)

    # -- files ------------------------------------------------------------------------

    def _named(self) -> dict[str, int]:
        named: dict[str, int] = {}
        for _, inum, raw in self.entries():
            named.setdefault(raw.split(b"\0", 1)[0].decode(errors="replace"), inum)
        return named

    def files(self) -> dict[str, int]:
        """Every file in the root directory: name -> size."""
        return {name: self.inode(inum).size for name, inum in self._named().items()}

    def read(self, name: str) -> bytes:
        """The content of file `name`; KeyError if there is none."""
        named = self._named()
        if name not in named:
            raise KeyError(name)
        return self.data(self.inode(named[name]))

    # -- the checker --------------------------------------------------------------------

    def check(self) -> list[str]:
        """Every broken invariant of ubfs.h, one line each; empty when consistent."""
        problems: list[str] = []
        problems += self._check_metadata_marks()
        owners, pointer_problems = self._check_pointers()
        problems += pointer_problems
        problems += self._check_bitmap(owners)
        problems += self._check_directory()
        return problems

    def _check_metadata_marks(self) -> list[str]:
        sb = self.sb
        problems = [
            f"metadata block {b} is marked free"
            for b in range(sb.data_start)
            if not self.marked_used(b)
        ]
        problems += [
            f"bit {b}, past the last block, is set"
            for b in range(sb.block_count, sb.bitmap_blocks * BITS_PER_BLOCK)
            if self.marked_used(b)
        ]
        return problems

    def _check_pointers(self) -> tuple[dict[int, int], list[str]]:
        """Block -> the inode pointing at it, and what is wrong with the pointers, sizes
        and tails of the used inodes."""
        owners: dict[int, int] = {}
        problems: list[str] = []
        for inode in self.inodes():
            problems += self._check_inode_type(inode)
            if not inode.used or inode.inum == 0:
                continue
            if inode.size > MAX_FILE_BYTES:
                problems.append(f"inode {inode.inum}: size {inode.size} is beyond any file")
            for pointer in self.pointers(inode):
                what = "table" if pointer.is_table else f"block {pointer.index}"
                if not self.is_data_block(pointer.block):
                    problems.append(
                        f"inode {inode.inum}: {what} points at block "
                        f"{pointer.block}, outside the data area"
                    )
                    continue
                if pointer.block in owners:
                    problems.append(
                        f"block {pointer.block} is pointed at twice: by inode "
                        f"{owners[pointer.block]} and inode {inode.inum}"
                    )
                owners.setdefault(pointer.block, inode.inum)
                if pointer.index is not None and pointer.index >= inode.block_span:
                    problems.append(
                        f"inode {inode.inum}: data block {pointer.index} is past "
                        f"its size {inode.size}"
                    )
            problems += self._check_tail(inode)
        return owners, problems

    def _check_inode_type(self, inode: Inode) -> list[str]:
        if inode.inum == 0:
            return [] if not inode.used else ["inode 0 is in use"]
        if inode.inum == ROOT_INODE:
            return [] if inode.type == TYPE_DIR else [f"the root inode has type {inode.type}"]
        if inode.type not in (TYPE_FREE, TYPE_FILE):
            return [f"inode {inode.inum} has type {inode.type}"]
        return []

    def _check_tail(self, inode: Inode) -> list[str]:
        """The bytes past the size in the last block must be zero."""
        offset = inode.size % BLOCK_SIZE
        if offset == 0:
            return []
        last = inode.size // BLOCK_SIZE
        for pointer in self.pointers(inode):
            if pointer.index == last and self.is_data_block(pointer.block):
                if any(self.block(pointer.block)[offset:]):
                    return [f"inode {inode.inum}: bytes past its size {inode.size} are not zero"]
                break
        return []

    def _check_bitmap(self, owners: dict[int, int]) -> list[str]:
        problems = []
        for b in range(self.sb.data_start, self.sb.block_count):
            used = self.marked_used(b)
            if used and b not in owners:
                problems.append(f"block {b} is marked used but nothing points at it")
            elif not used and b in owners:
                problems.append(f"block {b} is marked free but inode {owners[b]} points at it")
        return problems

    def _check_directory(self) -> list[str]:
        root = self.inode(ROOT_INODE)
        if root.type != TYPE_DIR:
            return []  # reported with the inode types
        problems = []
        if root.size % DIRENT_SIZE:
            problems.append(f"the directory's size {root.size} is not whole entries")
        try:
            entries = self.entries()
        except CorruptUbfs as exc:
            return [*problems, f"the directory cannot be read: {exc}"]
        names: set[bytes] = set()
        links: dict[int, int] = {}
        for offset, inum, raw in entries:
            problems += self._check_entry(offset, inum, raw, names)
            links[inum] = links.get(inum, 0) + 1
        for inode in self.inodes():
            if inode.type == TYPE_FILE and links.get(inode.inum, 0) != inode.nlink:
                problems.append(
                    f"inode {inode.inum}: nlink {inode.nlink}, but "
                    f"{links.get(inode.inum, 0)} entries name it"
                )
        return problems

    def _check_entry(self, offset: int, inum: int, raw: bytes, names: set[bytes]) -> list[str]:
        problems = []
        name, nul, _ = raw.partition(b"\0")
        if not nul or not name or b"/" in name:
            problems.append(f"entry at {offset}: bad name {raw!r}")
        elif name in names:
            problems.append(f"entry at {offset}: name {name!r} appears twice")
        names.add(name)
        if not ROOT_INODE < inum < self.sb.inode_count:
            problems.append(f"entry at {offset}: inode {inum} is not a file's")
        elif self.inode(inum).type != TYPE_FILE:
            problems.append(f"entry at {offset}: inode {inum} is not a file")
        return problems
