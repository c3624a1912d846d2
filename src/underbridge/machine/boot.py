"""Boot: configure the rings, map the kernel's boot pages, measure the context layout.

Kernel virtual layout, in the kernel page table only (user page tables map none of it):
  KERNEL_TEXT        boot stubs: `sysretq`, the (hooked) syscall entry        r-x  boot only
  KERNEL_STUBS       ring-0 stubs the machine runs for itself (calibration)   r-x  boot only
  KERNEL_DATA        the GDT                                                  rw-
These pages are U=1 with protection key 0, the kernel's domain: ring-0 code whose PKRU
denies key 0 (an in-kernel server) can neither read nor write them, and ring-3 code
never runs on this page table. PKRU does not govern instruction fetch, though, so the
boot-only code pages (which hold a `wrpkru` and `hlt`s) are unmapped once the machine
has booted: no ring-0 guest can jump into them. The lower half belongs to guests.

Invariants:
  - Boot runs once, in Machine's constructor, before any guest exists; a Boot is
    dropped afterwards (its stubs page is gone, so it could not run a stub again).
  - The ring templates come from real CPU state: ring 0 as configured by rings.py,
    ring 3 as left by a real `sysretq` (CPL changes no other way; see rings.py).
  - Every calibration page is unmapped and its frame freed before boot returns.
Who may call: the Machine (cpu.py). Calibration (calibrate.py) drives a Boot through
its `BootCpu` protocol: `uc`, `save_blob`, `run_ring0_stub`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_R11, UC_X86_REG_RCX

from underbridge.errors import KernelBug
from underbridge.machine import calibrate, rings
from underbridge.machine.context import ContextLayout, CpuContext
from underbridge.machine.exits import SYSCALL_PENDING, Pending
from underbridge.machine.paging import PageFlags, PageTable, VirtAddr
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysMem

KERNEL_TEXT = VirtAddr(0xFFFF_FFFF_8000_0000)
KERNEL_STUBS = VirtAddr(KERNEL_TEXT + PAGE_SIZE)
KERNEL_DATA = VirtAddr(0xFFFF_FFFF_8010_0000)
SYSRETQ_AT = KERNEL_TEXT
SYSCALL_ENTRY_AT = VirtAddr(KERNEL_TEXT + 0x10)
STUB_HALT = b"\xf4"  # the machine runs its own stubs `until` this hlt
USER_PROBE = VirtAddr(0x10000)  # mapped only during boot, to capture a ring-3 state

KERNEL_CODE = PageFlags(user=True, executable=True, pkey=0)
KERNEL_RW = PageFlags(user=True, writable=True, pkey=0)

# Runs the CPU as it stands from `begin` until `until` (0: none) with a flushed TLB;
# the event the hooks recorded, or None (the Machine's `_run_raw`).
RunRaw = Callable[[int, int], Pending | None]


class Boot:
    """One machine's boot. `run` executes code as the run loop would, without a context."""

    def __init__(
        self, uc: Uc, mem: PhysMem, frames: FrameAllocator, kernel_space: PageTable, run: RunRaw
    ) -> None:
        self.uc = uc
        self._mem = mem
        self._frames = frames
        self._kernel_space = kernel_space
        self._run = run
        self._ring0_boot: object = None

    def boot(self) -> tuple[ContextLayout, dict[int, CpuContext]]:
        """Boot the CPU; the context layout and the ring templates (0 and 3, PKRU 0)."""
        self._map_kernel_pages()
        rings.configure(
            self.uc,
            cr3=self._kernel_space.root,
            gdt_vaddr=KERNEL_DATA,
            syscall_entry=SYSCALL_ENTRY_AT,
        )
        layout, templates = self._calibrate_and_capture_rings()
        for boot_only in (KERNEL_TEXT, KERNEL_STUBS):
            self._unmap(boot_only)
        return layout, templates

    def _map_kernel_pages(self) -> None:
        text = self._map_kernel_page(KERNEL_TEXT, KERNEL_CODE)
        self._mem.write(text, bytes.fromhex("48 0f 07"))  # sysretq
        self._mem.write(text + (SYSCALL_ENTRY_AT - KERNEL_TEXT), STUB_HALT)
        self._map_kernel_page(KERNEL_STUBS, KERNEL_CODE)
        gdt = self._map_kernel_page(KERNEL_DATA, KERNEL_RW)
        self._mem.write(gdt, rings.gdt_bytes())

    def _map_kernel_page(self, vaddr: VirtAddr, flags: PageFlags) -> int:
        frame = self._frames.alloc()
        self._kernel_space.map(vaddr, frame, flags)
        return frame

    def _unmap(self, vaddr: VirtAddr) -> None:
        frame = self._kernel_space.unmap(vaddr)
        if frame is not None:
            self._frames.free(frame)

    # -- calibrate.BootCpu ------------------------------------------------------------

    def save_blob(self) -> bytes:
        context = self.uc.context_save()
        address = ctypes.cast(context.context, ctypes.c_void_p).value
        return ctypes.string_at(address, context.size)

    def run_ring0_stub(self, code: bytes, *, rax: int = 0, pkru: int | None = None) -> int | None:
        """Run machine-owned ring-0 code on the kernel page table.

        The stub first loads PKRU (if given) with a real wrpkru, then RAX, then `code`.
        Returns the vector of the exception the code raised, or None.
        """
        prologue = b"" if pkru is None else calibrate.wrpkru_stub(pkru)
        prologue += b"\x48\xb8" + rax.to_bytes(8, "little")  # mov rax, imm64
        stub = prologue + code
        frame = self._kernel_space.translate(KERNEL_STUBS)
        assert frame is not None
        self._mem.write(frame, stub + STUB_HALT)
        self.uc.ctl_flush_tb()
        self.uc.context_restore(self._ring0_boot)
        pending = self._run(KERNEL_STUBS, KERNEL_STUBS + len(stub))
        return None if pending is None else pending[1]

    # -- the ring templates -------------------------------------------------------------

    def _calibrate_and_capture_rings(self) -> tuple[ContextLayout, dict[int, CpuContext]]:
        self._ring0_boot = self.uc.context_save()
        regs = calibrate.register_offsets(self)
        pkru = calibrate.pkru_offset(self)
        self.uc.context_restore(self._ring0_boot)
        error_code, in_flight = calibrate.error_code_offsets(self, self._calibration_faults())
        self.uc.context_restore(self._ring0_boot)
        ring0_blob = self.save_blob()
        ring3 = self._enter_ring3_for_real()
        ring3_blob = self.save_blob()
        cs = calibrate.cs_selector_offset(ring0_blob, ring3_blob, rings.KERNEL_CS, rings.USER_CS)
        layout = ContextLayout(
            size=len(ring0_blob),
            regs=regs,
            pkru=pkru,
            error_code=error_code,
            exception_in_flight=in_flight,
            cs_selector=cs,
        )
        templates = {0: CpuContext(self._ring0_boot, layout), 3: CpuContext(ring3, layout)}
        for template in templates.values():
            template.pkru = 0
        return layout, templates

    def _calibration_faults(self) -> list[tuple[int, bytes, int, int]]:
        """Three real #PFs with SDM-fixed error codes (see calibrate.py)."""
        read_only = VirtAddr(KERNEL_DATA + 2 * PAGE_SIZE)
        keyed = VirtAddr(USER_PROBE + PAGE_SIZE)
        self._kernel_space.map(read_only, self._frames.alloc(), PageFlags())
        self._kernel_space.map(
            keyed, self._frames.alloc(), PageFlags(writable=True, user=True, pkey=1)
        )
        not_present = VirtAddr(KERNEL_DATA + PAGE_SIZE)
        return [
            (0x2, calibrate.STORE_RCX_AT_RAX, not_present, 0),
            (0x3, calibrate.STORE_RCX_AT_RAX, read_only, 0),
            (0x21, calibrate.LOAD_RCX_FROM_RAX, keyed, 0b0100),  # AD for key 1
        ]

    def _enter_ring3_for_real(self) -> object:
        """Execute a real sysretq into a ring-3 page that immediately does `syscall`."""
        for vaddr in (VirtAddr(KERNEL_DATA + 2 * PAGE_SIZE), VirtAddr(USER_PROBE + PAGE_SIZE)):
            frame = self._kernel_space.unmap(vaddr)
            assert frame is not None, "calibration pages are mapped"
            self._frames.free(frame)
        probe = self._frames.alloc()
        self._mem.write(probe, bytes.fromhex("0f 05 eb fe"))  # syscall; jmp $
        self._kernel_space.map(USER_PROBE, probe, PageFlags(user=True, executable=True))
        self.uc.context_restore(self._ring0_boot)
        self.uc.reg_write(UC_X86_REG_RCX, USER_PROBE)
        self.uc.reg_write(UC_X86_REG_R11, 0x202)
        self.uc.ctl_flush_tb()
        pending = self._run(SYSRETQ_AT, 0)
        if pending != SYSCALL_PENDING:
            raise KernelBug(f"boot: sysretq into ring 3 did not reach the probe ({pending})")
        ring3 = self.uc.context_save()
        self._kernel_space.unmap(USER_PROBE)
        self._frames.free(probe)
        return ring3
