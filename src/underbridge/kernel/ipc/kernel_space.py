"""Where in-kernel servers and their gates live on the kernel page table, and the kernel's
own fixed pages there.

Layout (system-wide virtual addresses; all pages U=1 except the current-thread word, so
PKRU governs ring-0 access, bridge/domain.py's rules):
  - each in-kernel server: a REGION_SIZE region below LOW_LIMIT, its image in the lower
    half, the kernel's allocations for it (stacks, save areas) in the upper half;
  - one gate slot per connection: its gate page in GATE_WINDOW (key 0, r-x), its control
    page in CONTROL_WINDOW (the connection's shared key), and for an application client
    the kernel's save area in KERNEL_SAVE_WINDOW (key 0);
  - the kernel's own pages, mapped once (`KernelPages`): the stack it calls gates on, the
    page it returns to, the checked port-I/O routines, and the current-thread word.
Gates use absolute 32-bit addresses, so everything they name stays below 2 GiB.

Invariants:
  - Only the kernel maps or unmaps these pages (`map_page`, `unmap_and_free`), always
    frame and mapping together: a frame is freed only after its mapping is gone.
  - The kernel's own pages stay mapped for the machine's life, so their frames may be
    remembered (`KernelPages` writes them without a page walk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.bridge import iocall
from underbridge.elf.image import ElfImage, Segment
from underbridge.errors import ElfError, OutOfMemory, SyscallError, UserError
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel

REGION_SIZE = 16 << 20  # each in-kernel server's system-wide virtual-address region
SERVER_STACK_PAGES = 16
CALL_STACK_PAGES = 4  # a server's stack for one connection's calls
GATE_WINDOW = 0x6000_0000  # key 0, r-x: one page per connection
CONTROL_WINDOW = 0x7000_0000  # shared key: a connection's tokens, one page each
KERNEL_SAVE_WINDOW = 0x7800_0000  # key 0: save areas of the kernel's own calls
IO_ROUTINES_PAGE = 0x7F00_0000  # key 0, r-x: the checked port-I/O routines (bridge/iocall.py)
# The id of the thread the CPU runs, for gates to bind a call to its thread (gate.py).
# A supervisor page (U=0), read-only, not executable: every ring-0 server can read it,
# none can write it (CR0.WP=1; the monitor traps `mov cr0`). It holds nothing secret.
CURRENT_THREAD_PAGE = 0x7F00_1000
# key 0, r-x: where the kernel sends an in-kernel client's IPC_CALL to its gate (migrate.py)
SYSCALL_SHIM_PAGE = 0x7F00_2000
MAX_GATES = (IO_ROUTINES_PAGE - KERNEL_SAVE_WINDOW) // PAGE_SIZE  # gate slots (the smallest window)
LOW_LIMIT = GATE_WINDOW  # in-kernel server regions end below this
KERNEL_CALL_STACK = 0x6300_0000_0000  # key 0: the stack the kernel calls gates on
KERNEL_RETURN_PAGE = 0x6300_0001_0000  # key 0, r-x
KERNEL_RETURN = KERNEL_RETURN_PAGE + 0x800  # where a kernel-called gate returns to


def in_gate(rip: int) -> bool:
    """Is rip inside gate code (where a thread must not be preempted)?"""
    return GATE_WINDOW <= rip < CONTROL_WINDOW


def outside_region(image: ElfImage, base: int) -> Segment | None:
    """A segment not inside [base, base + REGION_SIZE / 2), if any."""
    return next(
        (s for s in image.segments if s.vaddr < base or s.end > base + REGION_SIZE // 2), None
    )


def check_base(name: str, base: int, owner: str | None) -> None:
    """A server linked at `base` gets that region (which `owner` holds already, if not
    None): ElfError or UserError, before any work, if it cannot."""
    if base % REGION_SIZE or base + REGION_SIZE > LOW_LIMIT:
        raise ElfError(
            f"{name} is linked at {base:#x}, but in-kernel servers are linked at "
            f"{REGION_SIZE:#x}-aligned bases below {LOW_LIMIT:#x}"
        )
    if owner is not None:
        raise UserError(
            f"{name} is linked at {base:#x}, the region of {owner}, which is "
            "in kernel space already",
            hint=f"link each in-kernel server at its own {REGION_SIZE:#x}-aligned base",
        )


def check_image(name: str, base: int, image: ElfImage) -> None:
    """The image must lie in the lower half of its region (the upper half is the
    kernel's, for stacks and connection pages): UserError if it does not."""
    outside = outside_region(image, base)
    if outside is not None:
        raise UserError(
            f"{name}: its segment at {outside.vaddr:#x} lies outside "
            f"[{base:#x}, {base + REGION_SIZE // 2:#x}), the lower half of "
            "its kernel-space region",
            hint="link it at one base, as underbridge's toolchain does, or run it in user space",
        )


def check_handler(name: str, handler: int, base: int) -> None:
    """A service's handler must be in its in-kernel server's image, the lower half of
    the region at `base` (a gate or stub jumps there with the server's rights):
    EINVAL if it is not."""
    if not base <= handler < base + REGION_SIZE // 2:
        raise SyscallError(
            Errno.EINVAL, f"{name}'s handler {handler:#x} is not in its server's region"
        )


class Slots:
    """Slot numbers of the gate windows (a connection's page in each window is its slot's):
    the last one given back first, else the next never used."""

    def __init__(self) -> None:
        self._free: list[int] = []  # given back
        self._next = 1

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next >= MAX_GATES:
            raise SyscallError(Errno.ENOMEM, f"all {MAX_GATES} gate slots are in use")
        self._next += 1
        return self._next - 1

    def give_back(self, slot: int) -> None:
        self._free.append(slot)


def map_page(kernel: Kernel, vaddr: int, flags: PageFlags) -> PhysAddr:
    """A fresh frame mapped at vaddr on the kernel page table; nothing left on failure."""
    frame = kernel.machine.frames.alloc()
    try:
        kernel.machine.kernel_space.map(vaddr, frame, flags)
    except OutOfMemory:  # no frame for a page-table level
        kernel.machine.frames.free(frame)
        raise
    return frame


def unmap_and_free(kernel: Kernel, pages: list[int]) -> None:
    """Unmap kernel-space pages, then free their frames; empties `pages`."""
    space = kernel.machine.kernel_space
    for vaddr in pages:
        frame = space.unmap(vaddr)
        if frame is not None:
            kernel.machine.frames.free(frame)
    pages.clear()


class KernelPages:
    """The kernel's own pages for gate calls, mapped on first use (`ensure`).

    stack_pages: the size of the stack the kernel calls on, which grows down from the
    page at KERNEL_CALL_STACK (its top page, whatever the size); the page below its
    lowest is never mapped, so an overflow faults. word_flags: the current-thread
    word's page (default U=0, read-only).
    """

    def __init__(self, stack_pages: int = 1, word_flags: PageFlags | None = None) -> None:
        self.stack_pages = stack_pages
        # The current-thread word's page: U=0 for ring-0 gates; ring-3 gates (pku-shared)
        # need a U=1 read-only page under a key every PKRU may read.
        self.word_flags = word_flags or PageFlags(user=False)
        self.ready = False
        self._io_routines: iocall.IoRoutines | None = None
        self.return_slot = PhysAddr(0)  # where a kernel gate call's return RIP is pushed
        self._current_thread_word = PhysAddr(0)
        self._current_tid = 0  # what the current-thread word holds

    def ensure(self, kernel: Kernel) -> None:
        if self.ready:
            return
        data = PageFlags(user=True, writable=True)
        stack = map_page(kernel, KERNEL_CALL_STACK, data)
        for below in range(1, self.stack_pages):
            map_page(kernel, KERNEL_CALL_STACK - below * PAGE_SIZE, data)
        self.return_slot = PhysAddr(stack + PAGE_SIZE - 8)
        code, self._io_routines = iocall.generate(IO_ROUTINES_PAGE)
        io_page = map_page(kernel, IO_ROUTINES_PAGE, PageFlags(user=True, executable=True))
        kernel.machine.mem.write(io_page, code)
        ret = map_page(kernel, KERNEL_RETURN_PAGE, PageFlags(user=True, executable=True))
        # Never run by the kernel (run() stops first); a server jumping here gets #UD.
        kernel.machine.mem.write(ret, b"\x0f\x0b" * (PAGE_SIZE // 2))
        self._current_thread_word = map_page(kernel, CURRENT_THREAD_PAGE, self.word_flags)
        self.ready = True

    def io_routines(self, kernel: Kernel) -> iocall.IoRoutines:
        """Where the checked port-I/O routines are (mapping the pages on first use)."""
        self.ensure(kernel)
        assert self._io_routines is not None
        return self._io_routines

    def set_current_thread(self, kernel: Kernel, tid: int) -> None:
        """Ring-0 code is about to run on thread `tid`: the current-thread word says so."""
        if self.ready and tid != self._current_tid:
            kernel.machine.mem.write_u64(self._current_thread_word, tid)
            self._current_tid = tid
