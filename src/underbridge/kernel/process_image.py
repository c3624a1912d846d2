"""A new process's memory: the ELF image and a stack holding argv, in its VmSpace.

The initial stack follows the SysV layout: RSP -> argc, argv[0..n-1], NULL, an empty
environment (NULL), and an auxiliary vector (AT_PAGESZ, and where the program headers
are when the image maps them, as musl's start-up reads them), with the argument strings
above it. Every page built here is private to the
VmSpace, which frees it when the cap group ends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from underbridge.abi.syscalls import Errno
from underbridge.elf.image import ElfImage
from underbridge.errors import ElfError, OutOfMemory, ResourceExhausted, SyscallError, UserError
from underbridge.kernel.loader import image_pages
from underbridge.kernel.objects.vmspace import VmSpace
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE

USER_STACK_TOP = 0x7FFF_FFFF_0000
STACK_PAGES = 16
MAX_ARGV_BYTES = 8 * PAGE_SIZE


AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6


def auxv_of(image: ElfImage) -> list[tuple[int, int]]:
    aux = [(AT_PAGESZ, PAGE_SIZE)]
    if image.phdr_vaddr:
        aux += [(AT_PHDR, image.phdr_vaddr), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum)]
    return aux


def encode_arg(arg: str) -> bytes:
    """An argument's bytes: UTF-8, and the bytes of a host argument that was not UTF-8
    (which Python decodes with surrogateescape) given back as they were."""
    try:
        data = arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UserError(f"argument {arg!r} cannot be encoded (a lone surrogate)") from None
    if b"\0" in data:
        raise UserError(f"argument {arg!r} contains a NUL byte, which would end it early")
    return data


def initial_stack(
    argv: list[str], top: int, auxv: Sequence[tuple[int, int]] = ()
) -> tuple[bytes, int]:
    """The bytes of the initial stack ending at `top`, and the RSP pointing into them."""
    strings = b""
    offsets = []
    for arg in argv:
        offsets.append(len(strings))
        strings += encode_arg(arg) + b"\0"
    strings_at = (top - len(strings)) & ~0xF
    aux = [value for pair in [*auxv, (AT_NULL, 0)] for value in pair]
    vector = struct.pack(
        f"<Q{len(argv)}QQQ{len(aux)}Q",
        len(argv),
        *(strings_at + off for off in offsets),
        0,
        0,
        *aux,
    )
    rsp = (strings_at - len(vector)) & ~0xF
    image = vector + b"\0" * (strings_at - rsp - len(vector)) + strings
    image += b"\0" * (top - rsp - len(image))
    return image, rsp


def build_image(
    machine: Machine,
    vmspace: VmSpace,
    image: ElfImage,
    argv: list[str],
    stack_top: int = USER_STACK_TOP,
    stack_pages: int = STACK_PAGES,
) -> tuple[int, int]:
    """Map the ELF image and an argv stack into vmspace; returns (entry, initial rsp)."""
    if sum(len(encode_arg(arg)) + 1 for arg in argv) > MAX_ARGV_BYTES:
        raise UserError(f"arguments exceed {MAX_ARGV_BYTES} bytes")
    stack_low = stack_top - stack_pages * PAGE_SIZE
    for segment in image.segments:
        if segment.vaddr < stack_top and stack_low < segment.end:
            raise ElfError(
                f"the segment at {segment.vaddr:#x} overlaps the initial stack "
                f"[{stack_low:#x}, {stack_top:#x})",
                hint=f"link the program lower (the stack ends at {stack_top:#x})",
            )
    for vaddr, frame, flags in image_pages(machine, image):
        vmspace.map_private(vaddr, frame, flags)
    machine.code_changed(vmspace.table)
    stack_bytes, rsp = initial_stack(argv, stack_top, auxv_of(image))
    if len(stack_bytes) > stack_pages * PAGE_SIZE:
        raise UserError("arguments do not fit on the initial stack")
    for index in range(stack_pages):
        frame = machine.frames.alloc()
        end = len(stack_bytes) - index * PAGE_SIZE
        chunk = stack_bytes[max(end - PAGE_SIZE, 0) : max(end, 0)]
        machine.mem.write(frame + PAGE_SIZE - len(chunk), chunk)
        vmspace.map_private(
            stack_top - (index + 1) * PAGE_SIZE, frame, PageFlags(writable=True, user=True)
        )
    return image.entry, rsp


@contextmanager
def no_room_is_a_user_error(name: str) -> Iterator[None]:
    """Running out of frames or protection keys while creating `name` is the user's
    problem (a too-big program, too many in-kernel servers), told in one line. Whatever
    was built before the failure has been given back by then."""
    try:
        yield
    except OutOfMemory as error:
        raise ResourceExhausted(
            f"not enough physical memory to load {name} ({error})",
            hint="shrink its static data",
            errno=Errno.ENOMEM,
        ) from None
    except SyscallError as error:  # from placing it in kernel space: no key left
        raise ResourceExhausted(str(error), errno=error.errno) from None
