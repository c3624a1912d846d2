"""The Linux personality: the Linux x86-64 syscalls a statically linked musl program needs.

A cap group spawned with abi="linux" (a guest linked against musl, such as the SQLite
guest) owns the Linux syscall numbers; its native calls (IPC, markers) come in at
syscalls.LINUX_NATIVE_BASE + n and go to the native table unchanged. This module
serves the Linux numbers, and only those musl's start-up, stdio and malloc use:

  brk, mmap (private anonymous only), munmap  memory for malloc
  write, writev (fd 1 and 2)                  stdio to the console
  ioctl                                       always -ENOTTY (stdout is no terminal)
  arch_prctl(ARCH_SET_FS)                     the thread pointer musl's TLS needs
  set_tid_address, getpid, gettid             identities
  clock_gettime                               the simulated clock (cycles at 2.0 GHz)
  exit, exit_group                            the end

Everything else returns -ENOSYS and is counted in `LinuxState.unimplemented`, so a
run shows what a program asked for and did not get. Files are not here: a Linux-ABI
guest reaches the file system over IPC (guest/apps/ycsb/ubvfs.c).

Invariants:
  - The heap (brk) grows up from the first page above the image, at most HEAP_LIMIT
    bytes; mmaps are placed top-down below MMAP_TOP, never over a mapped page. All of
    it is anonymous memory the VmSpace owns and frees with the group.
  - Every guest pointer goes through umem, checked against the caller's own mappings
    and PKRU, like any native syscall.
  - Errors are Linux's negative errno values (the shared ones equal syscalls.Errno).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.errors import SyscallError
from underbridge.kernel import umem
from underbridge.kernel.objects.thread import Thread
from underbridge.kernel.objects.vmspace import USER_END, USER_MIN
from underbridge.machine.context import Reg
from underbridge.machine.costs import NOMINAL_HZ
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

HEAP_LIMIT = 256 << 20
MMAP_TOP = 0x7F00_0000_0000
MAX_IOVEC = 1024
_IOVEC = struct.Struct("<QQ")
_TIMESPEC = struct.Struct("<qq")


class LinuxSys(IntEnum):
    WRITE = 1
    MMAP = 9
    MUNMAP = 11
    BRK = 12
    IOCTL = 16
    WRITEV = 20
    GETPID = 39
    EXIT = 60
    ARCH_PRCTL = 158
    GETTID = 186
    SET_TID_ADDRESS = 218
    CLOCK_GETTIME = 228
    EXIT_GROUP = 231


class LinuxErrno(IntEnum):
    EBADF = 9
    ENOMEM = 12
    EFAULT = 14
    EINVAL = 22
    ENOTTY = 25
    ENOSYS = 38


PROT_EXEC = 4
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x02, 0x10, 0x20
ARCH_SET_FS = 0x1002


@dataclass(slots=True)
class LinuxState:
    """Per cap group: where the heap and the mmaps are."""

    heap_start: int
    heap_end: int  # the current break
    mmap_floor: int = MMAP_TOP  # mmaps so far lie in [mmap_floor, MMAP_TOP)
    unimplemented: Counter[int] = field(default_factory=Counter)

    @classmethod
    def after_image(cls, image_end: int) -> LinuxState:
        start = _page_up(image_end)
        return cls(start, start)


def _page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _pages(start: int, end: int) -> list[int]:
    return list(range(start, end, PAGE_SIZE))


def _state(thread: Thread) -> LinuxState:
    state = thread.group.linux
    assert state is not None, "a Linux syscall from a native cap group"
    return state


# -- memory ----------------------------------------------------------------------


def sys_brk(kernel: Kernel, thread: Thread, address: int, *_: int) -> int:
    """Move the break; return the (possibly unchanged) break, as Linux does."""
    state = _state(thread)
    if not state.heap_start <= address <= state.heap_start + HEAP_LIMIT:
        return state.heap_end
    old_top, new_top = _page_up(state.heap_end), _page_up(address)
    vmspace = thread.group.vmspace
    if new_top > old_top:
        try:
            vmspace.map_anonymous(old_top, (new_top - old_top) // PAGE_SIZE)
        except SyscallError:
            return state.heap_end
    elif new_top < old_top:
        vmspace.unmap_anonymous(_pages(new_top, old_top))
    state.heap_end = address
    return address


def sys_mmap(
    kernel: Kernel,
    thread: Thread,
    address: int,
    length: int,
    prot: int,
    flags: int,
    fd: int,
    offset: int,
) -> int:
    """Private anonymous memory only: what malloc asks for. The pages are always
    readable and writable (a PROT_READ-only request gets writable pages: malloc never
    makes one, and nothing here relies on it)."""
    if flags & MAP_ANONYMOUS == 0 or flags & MAP_PRIVATE == 0 or flags & MAP_FIXED:
        raise SyscallError(Errno.EINVAL, "only private anonymous mmaps are supported")
    if prot & PROT_EXEC or length <= 0 or length > HEAP_LIMIT or offset:
        raise SyscallError(Errno.EINVAL, f"mmap of {length:#x} bytes, prot {prot:#x}")
    state = _state(thread)
    size = _page_up(length)
    vmspace = thread.group.vmspace
    vaddr = state.mmap_floor - size
    while any(vmspace.table.lookup(page) is not None for page in _pages(vaddr, vaddr + size)):
        vaddr -= size  # skip over whatever is mapped there (rare: only after munmaps)
        if vaddr < USER_MIN:
            raise SyscallError(Errno.ENOMEM, f"no room for {size:#x} bytes below MMAP_TOP")
    vmspace.map_anonymous(vaddr, size // PAGE_SIZE)
    state.mmap_floor = min(state.mmap_floor, vaddr)
    return vaddr


def sys_munmap(kernel: Kernel, thread: Thread, address: int, length: int, *_: int) -> int:
    if address % PAGE_SIZE or length <= 0 or length > HEAP_LIMIT or address + length > USER_END:
        raise SyscallError(Errno.EINVAL, f"munmap {address:#x}+{length:#x}")
    vmspace = thread.group.vmspace
    pages = _pages(address, address + _page_up(length))
    if any(
        page not in vmspace.anon_frames and vmspace.table.lookup(page) is not None for page in pages
    ):  # the image, the stack: Linux would unmap them, we do not
        raise SyscallError(Errno.EINVAL, "only memory from mmap or brk can be unmapped")
    vmspace.unmap_anonymous(pages)
    return 0


# -- console -----------------------------------------------------------------------


def _console_fd(fd: int) -> None:
    if fd not in (1, 2):
        raise SyscallError(LinuxErrno.EBADF, f"fd {fd}")


def sys_write(kernel: Kernel, thread: Thread, fd: int, buf: int, length: int, *_: int) -> int:
    _console_fd(fd)
    data = umem.copy_in(
        kernel.machine, thread.group.vmspace.table, buf, length, pkru=thread.context.pkru
    )
    kernel.console_write(thread.group, data)
    return len(data)


def sys_writev(kernel: Kernel, thread: Thread, fd: int, iov: int, count: int, *_: int) -> int:
    _console_fd(fd)
    if not 0 <= count <= MAX_IOVEC:
        raise SyscallError(Errno.EINVAL, f"{count} iovecs")
    table, pkru = thread.group.vmspace.table, thread.context.pkru
    raw = umem.copy_in(kernel.machine, table, iov, count * _IOVEC.size, pkru=pkru)
    data = b"".join(
        umem.copy_in(kernel.machine, table, base, length, pkru=pkru)
        for base, length in _IOVEC.iter_unpack(raw)
    )
    kernel.console_write(thread.group, data)
    return len(data)


def sys_ioctl(kernel: Kernel, thread: Thread, *_: int) -> int:
    return -LinuxErrno.ENOTTY


# -- threads, time, exit -----------------------------------------------------------------


def sys_arch_prctl(kernel: Kernel, thread: Thread, code: int, address: int, *_: int) -> int:
    if code != ARCH_SET_FS:
        raise SyscallError(Errno.EINVAL, f"arch_prctl code {code:#x}")
    if 1 << 47 <= address < 0xFFFF_8000_0000_0000:
        raise SyscallError(Errno.EINVAL, f"non-canonical FS base {address:#x}")
    thread.context[Reg.FS_BASE] = address
    return 0


def sys_set_tid_address(kernel: Kernel, thread: Thread, *_: int) -> int:
    return thread.tid


def sys_getpid(kernel: Kernel, thread: Thread, *_: int) -> int:
    return thread.group.pid


def sys_gettid(kernel: Kernel, thread: Thread, *_: int) -> int:
    return thread.tid


def sys_clock_gettime(kernel: Kernel, thread: Thread, _clock: int, address: int, *_: int) -> int:
    """Every clock is the simulated one: deterministic, cycles at the nominal clock."""
    cycles = kernel.machine.tally().cycles
    seconds, rest = divmod(cycles, NOMINAL_HZ)
    umem.copy_out(
        kernel.machine,
        thread.group.vmspace.table,
        address,
        _TIMESPEC.pack(seconds, rest * 1_000_000_000 // NOMINAL_HZ),
        pkru=thread.context.pkru,
    )
    return 0


def sys_exit_group(kernel: Kernel, thread: Thread, status: int, *_: int) -> None:
    kernel.exit(thread.group, status & 0xFF)


Handler = Callable[..., "int | None"]

HANDLERS: dict[int, Handler] = {
    LinuxSys.WRITE: sys_write,
    LinuxSys.MMAP: sys_mmap,
    LinuxSys.MUNMAP: sys_munmap,
    LinuxSys.BRK: sys_brk,
    LinuxSys.IOCTL: sys_ioctl,
    LinuxSys.WRITEV: sys_writev,
    LinuxSys.GETPID: sys_getpid,
    LinuxSys.EXIT: sys_exit_group,  # a single-threaded program: the thread is the process
    LinuxSys.ARCH_PRCTL: sys_arch_prctl,
    LinuxSys.GETTID: sys_gettid,
    LinuxSys.SET_TID_ADDRESS: sys_set_tid_address,
    LinuxSys.CLOCK_GETTIME: sys_clock_gettime,
    LinuxSys.EXIT_GROUP: sys_exit_group,
}


def dispatch(kernel: Kernel, thread: Thread, number: int, args: tuple[int, ...]) -> int | None:
    """Serve Linux syscall `number`; the value for RAX (negative errno), or None."""
    handler = HANDLERS.get(number)
    if handler is None:
        _state(thread).unimplemented[number] += 1
        return -LinuxErrno.ENOSYS
    try:
        return handler(kernel, thread, *args)
    except SyscallError as error:
        return -error.errno
