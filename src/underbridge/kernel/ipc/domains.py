"""Execution domains of in-kernel servers: admission, regions, and the protection keys.

A server spawned in kernel space gets an execution domain (bridge/domain.py states the
isolation rules) and runs in ring 0 on the kernel page table in its own REGION_SIZE
region (kernel_space.py). Admission is scan, rewrite, verify (privilege deprivation).

Invariants:
  - A domain's key is allocated before any work and released exactly once: when
    admission fails (`refuse`) or its cap group ends (`end`).
  - Every page `take_pages` maps in a region carries the domain's key, is recorded in
    `pages` until `return_pages` or `end` unmaps it, and is followed by an unmapped guard
    page, so a stack overflow faults instead of reaching a neighbour.
  - The lower half of a region holds only the server's image (`admit` refuses anything
    else), so no executable page of a server adjoins another server's or the kernel's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno
from underbridge.bridge import admission
from underbridge.bridge.domain import Domain, KeyAllocator
from underbridge.bridge.rewrite import check_code_size
from underbridge.elf.image import parse_elf
from underbridge.errors import OutOfMemory, SyscallError, UserError
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.kernel.objects.vmspace import USER_END, USER_MIN
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.bridge import iocall
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread


@dataclass(eq=False)
class DomainState:
    domain: Domain
    group: CapGroup
    base: int
    next_free: int  # bump allocator for per-connection pages, growing down
    pages: list[int] = field(default_factory=list)  # pages of live allocations
    reusable: dict[int, list[int]] = field(default_factory=dict)  # page count -> lows
    tombstones: list[int] = field(default_factory=list)  # gate slots answering -EPIPE

    @property
    def pkru(self) -> int:
        return self.domain.pkru


class Domains:
    """The in-kernel servers' domains, by cap group, and the keys they and their
    connections hold."""

    def __init__(self) -> None:
        self.keys = KeyAllocator()
        self.readable: tuple[int, ...] = ()  # keys every domain may read (pku_user.py)
        self._states: dict[CapGroup, DomainState] = {}

    def of(self, group: CapGroup) -> DomainState | None:
        return self._states.get(group)

    def __contains__(self, group: CapGroup) -> bool:
        return group in self._states

    def __iter__(self) -> Iterator[DomainState]:
        return iter(self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    # -- admission --------------------------------------------------------------------

    def admit(
        self,
        name: str,
        base: int,
        elf: bytes,
        *,
        io_routines: Callable[[], iocall.IoRoutines] | None,
    ) -> tuple[Domain, int, bytes]:
        """A new in-kernel server: its domain, its initial stack top, the binary to map.

        Loading is scan, rewrite, verify (privilege deprivation):
          - the rewriter (bridge/rewrite.py) breaks up every wrpkru/XRSTOR occurrence
            hidden inside other instructions and turns port I/O into calls of the
            kernel's checked routines;
          - the result is scanned again: code that can still change PKRU (an aligned
            wrpkru, or an occurrence the rewriter could not break up) is refused with
            the findings. Port I/O the rewriter could not convert stays, trapped by
            the secure monitor at run time.
        io_routines: where the rewriter sends port I/O, asked for only once the checks
        have passed and the key is taken (the first call maps the kernel's pages); None
        keeps the binary as built (it is still verified). A binary with
        more code than rewrite.MAX_CODE_BYTES is refused first (CodeTooLarge): loading
        costs time linear in the code. So is one with a segment outside the lower half of
        its region (the upper half is the kernel's, for stacks and connection pages): no
        executable page of a server then adjoins another server's or the kernel's, so
        the scan of its own image covers every run of executable pages its code can run
        through (no wrpkru split across two images).
        """
        owner = next((s.group.name for s in self._states.values() if s.base == base), None)
        ks.check_base(name, base, owner)
        image = parse_elf(elf, name=name)
        check_code_size(image, name)
        ks.check_image(name, base, image)
        # first: no work if none is left
        domain = Domain(name, self.keys.allocate(name), readable=self.readable)
        try:
            elf = self._deprivileged(name, base, elf, io_routines)
        except BaseException:
            self.keys.release(domain.key)
            raise
        return domain, base + ks.REGION_SIZE - PAGE_SIZE, elf

    def _deprivileged(
        self, name: str, base: int, elf: bytes, io_routines: Callable[[], iocall.IoRoutines] | None
    ) -> bytes:
        # Cached by content (bridge/admission.py): the same binary is rewritten once. The
        # rewritten binary is kept unless its trampolines do not fit the region.
        elf, pkru_writers = admission.vet(
            elf,
            name=name,
            io_routines=io_routines and io_routines(),
            rewrite=io_routines is not None,
            base=base,
            fits=lambda data: ks.outside_region(parse_elf(data, name=name), base) is None,
        )
        if pkru_writers:
            found = ", ".join(f"{f.kind} at {f.vaddr:#x}" for f in pkru_writers[:5])
            raise UserError(
                f"{name} cannot run in kernel space: its code can change PKRU ({found})",
                hint="underbridge scan shows every occurrence; run it in user space instead",
            )
        return elf

    def refuse(self, domain: Domain) -> None:
        self.keys.release(domain.key)

    def adopt(self, group: CapGroup, domain: Domain, base: int) -> None:
        group.vmspace.guest_window = (base, base + ks.REGION_SIZE // 2)
        stack_floor = base + ks.REGION_SIZE - PAGE_SIZE * (ks.SERVER_STACK_PAGES + 1)
        self._states[group] = DomainState(domain, group, base, stack_floor - PAGE_SIZE)

    def end(self, kernel: Kernel, group: CapGroup) -> DomainState | None:
        """The group has ended: unmap its region's pages, release its key. Its state, or
        None if it had no domain (the caller gives back its tombstone slots)."""
        state = self._states.pop(group, None)
        if state is not None:
            ks.unmap_and_free(kernel, state.pages)  # unmapped before their frames go
            self.keys.release(state.domain.key)
        return state

    def forget(self, kernel: Kernel, group: CapGroup) -> None:
        """The group leaves kernel space alive (migrate.py moved its own pages off the
        kernel page table): unmap whatever the kernel allocated in its region, release
        its key."""
        state = self._states.pop(group)
        ks.unmap_and_free(kernel, state.pages)
        self.keys.release(state.domain.key)
        group.vmspace.guest_window = (USER_MIN, USER_END)

    # -- pages in a region ---------------------------------------------------------------

    def take_pages(self, kernel: Kernel, state: DomainState, count: int) -> int:
        """`count` fresh pages in a domain's region, under its key; their lowest address.

        Addresses given back by `return_pages` are reused; otherwise the region's free
        part shrinks downwards, with an unmapped guard page after each allocation.
        All or nothing: on OutOfMemory none of the pages stays mapped.
        """
        if state.reusable.get(count):
            low = state.reusable[count].pop()
        else:
            low = state.next_free - (count - 1) * PAGE_SIZE
            if low < state.base + ks.REGION_SIZE // 2:
                raise SyscallError(Errno.ENOMEM, f"{state.domain.name}'s region is full")
            state.next_free = low - 2 * PAGE_SIZE
        flags = PageFlags(user=True, writable=True, pkey=state.domain.key)
        mapped: list[int] = []
        try:
            for index in range(count):
                ks.map_page(kernel, low + index * PAGE_SIZE, flags)
                mapped.append(low + index * PAGE_SIZE)
        except OutOfMemory:
            ks.unmap_and_free(kernel, mapped)
            state.reusable.setdefault(count, []).append(low)
            raise
        state.pages.extend(mapped)
        return low

    def return_pages(self, kernel: Kernel, state: DomainState, low: int, count: int) -> None:
        if state.group not in self._states:
            return  # its whole region is already gone
        pages = [low + index * PAGE_SIZE for index in range(count)]
        for vaddr in pages:
            state.pages.remove(vaddr)
        ks.unmap_and_free(kernel, pages)
        state.reusable.setdefault(count, []).append(low)

    def ring0_threads(self) -> list[Thread]:
        return [
            thread
            for state in self._states.values()
            for thread in state.group.threads
            if thread.alive
        ]
