"""Helpers for regression tests that edit a built guest's ELF program headers."""

import struct

PHDR_SIZE = 56
P_VADDR, P_MEMSZ = 16, 40


def phdr_offsets(data: bytes) -> list[int]:
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phnum = struct.unpack_from("<H", data, 56)[0]
    return [phoff + PHDR_SIZE * index for index in range(phnum)]


def load_offsets(data: bytes) -> list[int]:
    """Program header offsets of the PT_LOAD entries, in file order."""
    return [off for off in phdr_offsets(data) if struct.unpack_from("<I", data, off)[0] == 1]


def with_field(data: bytes, phdr: int, field: int, value: int) -> bytes:
    edited = bytearray(data)
    struct.pack_into("<Q", edited, phdr + field, value)
    return bytes(edited)
