"""Address spaces: a page table plus what is mapped in it and who owns those frames.

Three kinds of memory live in a VmSpace: private pages (the ELF image and thread stacks,
whose frames the VmSpace owns), anonymous pages (a Linux-ABI guest's brk heap and
mmaps, owned by the VmSpace and unmappable page by page) and PMO mappings (frames the
PMO owns). Every mapped
page is a user page; `pkey` tags all of them (0 for ordinary processes).

Invariants:
  - Mappings never overlap: a map that would touch a present page fails with EBUSY.
  - Only page-aligned ranges inside [USER_MIN, USER_END) are mapped for guests.
  - Destroying the VmSpace unmaps every PMO (which stay alive for their other holders)
    and frees the private frames and the page table.
  - A pinned PMO mapping (a connection's shared buffer) belongs to the kernel: the
    guest cannot unmap it (PMO_UNMAP gives EPERM); it goes when its PMO is destroyed
    (the connection closes) or the VmSpace is.
"""

from __future__ import annotations

from dataclasses import dataclass

from underbridge.abi.syscalls import Errno, Prot
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.kernel.objects.pmo import Pmo
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags, PageTable
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

USER_MIN = 0x10000
USER_END = 1 << 47


@dataclass(frozen=True, slots=True)
class PmoMapping:
    pmo: Pmo
    prot: Prot
    pinned: bool = False  # the kernel's: the guest cannot unmap it


class VmSpace:
    def __init__(self, machine: Machine, *, table: PageTable | None = None, pkey: int = 0) -> None:
        self.machine = machine
        self.owns_table = table is None
        self.table = machine.new_page_table() if table is None else table
        self.pkey = pkey
        self.private_frames: list[PhysAddr] = []
        self.private_pages: list[int] = []
        self.pmo_mappings: dict[int, PmoMapping] = {}
        self.anon_frames: dict[int, PhysAddr] = {}  # vaddr -> frame
        # Where the guest itself may map memory objects (an in-kernel server: only the
        # lower half of its own region, so it can never collide with what the kernel
        # maps on the shared kernel page table).
        self.guest_window = (USER_MIN, USER_END)

    def _check_range(self, vaddr: int, size: int) -> None:
        if vaddr % PAGE_SIZE or size <= 0 or vaddr < USER_MIN or vaddr + size > USER_END:
            raise SyscallError(Errno.EINVAL, f"bad mapping range {vaddr:#x}+{size:#x}")
        for page in range(vaddr, vaddr + size, PAGE_SIZE):
            if self.table.lookup(page) is not None:
                raise SyscallError(Errno.EBUSY, f"{page:#x} is already mapped")

    def map_private(self, vaddr: int, frame: PhysAddr, flags: PageFlags) -> None:
        """Map a frame this VmSpace now owns (image and stack pages).

        Ownership comes first, so the frame is freed with the VmSpace even if mapping it
        fails for want of a page-table frame.
        """
        self.private_frames.append(frame)
        self.table.map(vaddr, frame, PageFlags(flags.writable, True, flags.executable, self.pkey))
        self.private_pages.append(vaddr)

    def release_private(self, vaddr: int, pages: int) -> list[PhysAddr]:
        """Unmap `pages` private pages from vaddr and hand their frames to the caller,
        who owns them from now on (the supervisor keeps a server's disk this way)."""
        frames = []
        for index in range(pages):
            page = vaddr + index * PAGE_SIZE
            mapping = self.table.lookup(page)
            if mapping is None or page not in self.private_pages:
                raise SyscallError(Errno.EINVAL, f"{page:#x} is not a private page")
            self.table.unmap(page)
            self.private_pages.remove(page)
            self.private_frames.remove(mapping.frame)
            frames.append(mapping.frame)
        return frames

    def replace_private(self, vaddr: int, frames: list[PhysAddr]) -> None:
        """Map `frames` (now this space's) over the private pages from vaddr, with their
        flags; the frames they replace are freed."""
        for index, frame in enumerate(frames):
            page = vaddr + index * PAGE_SIZE
            mapping = self.table.lookup(page)
            if mapping is None or page not in self.private_pages:
                raise SyscallError(Errno.EINVAL, f"{page:#x} is not a private page")
            self.table.unmap(page)
            self.private_frames.remove(mapping.frame)
            self.machine.frames.free(mapping.frame)
            self.private_frames.append(frame)
            self.table.map(page, frame, mapping.flags)

    def code_runs(self, owner: str) -> list[tuple[int, bytes]]:
        """This space's executable private pages, joined into runs of adjacent pages
        (scanners look at every byte offset, across page boundaries too): (start,
        code) pairs. EPERM if a page is writable too: it could change after a scan."""
        runs: list[tuple[int, bytearray]] = []
        for vaddr in sorted(self.private_pages):
            mapping = self.table.lookup(vaddr)
            if mapping is None or not mapping.flags.executable:
                continue
            if mapping.flags.writable:
                raise SyscallError(Errno.EPERM, f"{owner} has a writable code page")
            code = self.machine.mem.read(mapping.frame, PAGE_SIZE)
            if runs and runs[-1][0] + len(runs[-1][1]) == vaddr:
                runs[-1][1].extend(code)
            else:
                runs.append((vaddr, bytearray(code)))
        return [(start, bytes(code)) for start, code in runs]

    def map_anonymous(self, vaddr: int, pages: int) -> None:
        """Map `pages` fresh pages at vaddr: zeroed (by the allocator), writable, not
        executable. All or nothing: ENOMEM leaves nothing mapped."""
        self._check_range(vaddr, pages * PAGE_SIZE)
        flags = PageFlags(writable=True, user=True, pkey=self.pkey)
        done = []
        try:
            for index in range(pages):
                page = vaddr + index * PAGE_SIZE
                frame = self.machine.frames.alloc()
                self.anon_frames[page] = frame
                done.append(page)
                self.table.map(page, frame, flags)
        except OutOfMemory:
            self.unmap_anonymous(done)
            raise SyscallError(Errno.ENOMEM, "out of physical memory") from None

    def unmap_anonymous(self, pages: list[int]) -> None:
        """Unmap and free anonymous pages; pages that are not anonymous are skipped."""
        for page in pages:
            frame = self.anon_frames.pop(page, None)
            if frame is None:
                continue
            if self.table.lookup(page) is not None:
                self.table.unmap(page)
            self.machine.frames.free(frame)

    def map_pmo_for_guest(self, pmo: Pmo, vaddr: int, prot: Prot) -> None:
        """PMO_MAP: like map_pmo, but only inside the guest's own window."""
        low, high = self.guest_window
        if not (low <= vaddr and vaddr + pmo.size <= high):
            raise SyscallError(
                Errno.EINVAL,
                f"{vaddr:#x} is outside this cap group's mapping window [{low:#x}, {high:#x})",
            )
        self.map_pmo(pmo, vaddr, prot)

    def map_pmo(
        self, pmo: Pmo, vaddr: int, prot: Prot, *, pkey: int | None = None, pinned: bool = False
    ) -> None:
        """Map the whole PMO at vaddr, tagged with this space's key unless told another.

        pinned: the mapping is the kernel's (a connection's buffer), not the guest's to
        unmap."""
        self._check_range(vaddr, pmo.size)
        flags = PageFlags(
            writable=bool(prot & Prot.WRITE), user=True, pkey=self.pkey if pkey is None else pkey
        )
        mapped = 0
        try:
            for frame in pmo.frames:
                self.table.map(vaddr + mapped * PAGE_SIZE, frame, flags)
                mapped += 1
        except OutOfMemory:  # no frame for a page-table level: undo, all or nothing
            for index in range(mapped):
                self.table.unmap(vaddr + index * PAGE_SIZE)
            raise SyscallError(Errno.ENOMEM, "no memory for page tables") from None
        self.pmo_mappings[vaddr] = PmoMapping(pmo, prot, pinned)
        pmo.mappings.append((self, vaddr))

    def unmap_pmo_for_guest(self, vaddr: int) -> None:
        """PMO_UNMAP: like unmap_pmo, but never a mapping the kernel pinned."""
        mapping = self.pmo_mappings.get(vaddr)
        if mapping is not None and mapping.pinned:
            raise SyscallError(
                Errno.EPERM,
                f"the memory object at {vaddr:#x} is a connection's buffer, mapped by the kernel",
            )
        self.unmap_pmo(vaddr)

    def unmap_pmo(self, vaddr: int) -> None:
        mapping = self.pmo_mappings.pop(vaddr, None)
        if mapping is None:
            raise SyscallError(Errno.EINVAL, f"no memory object is mapped at {vaddr:#x}")
        for index in range(len(mapping.pmo.frames)):
            self.table.unmap(vaddr + index * PAGE_SIZE)
        mapping.pmo.mappings.remove((self, vaddr))

    def destroy(self) -> None:
        for vaddr in list(self.pmo_mappings):
            self.unmap_pmo(vaddr)
        self.unmap_anonymous(list(self.anon_frames))
        if self.owns_table:
            self.machine.destroy_page_table(self.table)
        else:
            for page in self.private_pages:
                self.table.unmap(page)
        for frame in self.private_frames:
            self.machine.frames.free(frame)
        self.private_frames.clear()
        self.private_pages.clear()
