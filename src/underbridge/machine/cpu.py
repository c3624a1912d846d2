"""The Machine: one emulated x86-64 CPU with PKU, its RAM, and the kernel's page table.

This module owns the Unicorn handle and is the only caller of `emu_start`. Hooks only
record what happened and stop the CPU; everything else (the kernel's response) runs
after `run` returns, outside the engine's callback context. The first event of a run
wins: `emu_stop` takes effect at the end of the current translation block, so a later
instruction of that block may still raise another event, which is ignored.

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
  - Before the CPU runs, the emulated TLB is coherent with every page table: any page
    table change, CR3 change or PKRU change since the last run triggers a full flush.
  - A guest cannot crash the Python process: a CPU exception, an invalid instruction
    or an engine error while guest code runs becomes an Exit carrying a Fault.
  - Port I/O follows the SDM for IOPL 0 with no TSS I/O bitmap: #GP in ring 3 (the
    engine itself lets every I/O instruction through). The refused instruction has no
    effect and is the one reported; the instructions after it in the same translation
    block still run with the guest's own ring-3 rights before the CPU stops, and the
    kernel terminates the guest. (INS/OUTS touch memory before the engine's I/O hook,
    so a bad buffer there is reported as #PF where hardware reports #GP.) There are
    no devices: ring-0 IN reads all ones (a floating bus), OUT is discarded.
  - rdtsc and rdtscp return the machine's clock (`clock`), never the host's TSC: the
    same run reads the same values.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from enum import Enum
from functools import partial

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_INSN_INVALID,
    UC_ERR_OK,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_64,
    UC_TLB_CPU,
    Uc,
    UcError,
)
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib
from unicorn.x86_const import (
    UC_CPU_X86_SKYLAKE_SERVER,
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_INS_RDTSC,
    UC_X86_INS_RDTSCP,
    UC_X86_INS_SYSCALL,
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_R11,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
)

from underbridge.errors import KernelBug
from underbridge.machine import calibrate, faults
from underbridge.machine import rings as privilege  # renamed; the alias keeps this edit to imports
from underbridge.machine.accounting import Accounting, Charges, Tally
from underbridge.machine.context import ContextLayout, CpuContext, Reg
from underbridge.machine.faults import Fault
from underbridge.machine.monitor import Monitor
from underbridge.machine.paging import PageFlags, PageTable, VirtAddr, is_canonical
from underbridge.machine.physmem import PAGE_SIZE, FrameAllocator, PhysMem
from underbridge.machine.vmfunc import EptpLists

_TLB_FLUSH = (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH  # uc_ctl's code, no arguments
KERNEL_TEXT = VirtAddr(0xFFFF_FFFF_8000_0000)
KERNEL_STUBS = VirtAddr(KERNEL_TEXT + PAGE_SIZE)
KERNEL_DATA = VirtAddr(0xFFFF_FFFF_8010_0000)
SYSRETQ_AT = KERNEL_TEXT
SYSCALL_ENTRY_AT = VirtAddr(KERNEL_TEXT + 0x10)
STUB_HALT = b"\xf4"  # the machine runs its own stubs `until` this hlt
USER_PROBE = VirtAddr(0x10000)  # mapped only during boot, to capture a ring-3 state

KERNEL_CODE = PageFlags(user=True, executable=True, pkey=0)
KERNEL_RW = PageFlags(user=True, writable=True, pkey=0)

DEFAULT_MEMORY_MIB = 64
UNLIMITED_COUNT = 1 << 62


def accounting_class() -> type[Accounting]:
    """The block hook's implementation: native (C) unless $UNDERBRIDGE_ACCOUNTING=python
    asks for the Python reference, or gcc is missing. Both give the same counts."""
    if os.environ.get("UNDERBRIDGE_ACCOUNTING", "native") == "python":
        return Accounting
    from underbridge.machine import native_accounting

    return native_accounting.NativeAccounting if native_accounting.available() else Accounting


class ExitKind(Enum):
    SYSCALL = "syscall"  # guest executed `syscall`; RIP is past it
    FAULT = "fault"  # a CPU exception; the Fault says which
    RETURNED = "returned"  # execution reached the `stop_at` address
    PREEMPTED = "preempted"  # the instruction budget ran out
    HALTED = "halted"  # the CPU stopped on its own (ring-0 hlt)


@dataclass(frozen=True, slots=True)
class Exit:
    kind: ExitKind
    fault: Fault | None = None


# The exits without a fault, made once (a run ends in one of these on every IPC path).
_SYSCALL, _RETURNED = Exit(ExitKind.SYSCALL), Exit(ExitKind.RETURNED)
_PREEMPTED, _HALTED = Exit(ExitKind.PREEMPTED), Exit(ExitKind.HALTED)
# The engine's entry points the run loop calls, bypassing the binding's wrappers.
_uc_emu_start = uclib.uc_emu_start
_uc_context_save = uclib.uc_context_save
_uc_context_restore = uclib.uc_context_restore
_uc_ctl = uclib.uc_ctl
_uc_emu_stop = uclib.uc_emu_stop
_SYSCALL_PENDING = (ExitKind.SYSCALL, 0)


class Machine:
    """One emulated computer. Many can live in one process; they share nothing."""

    def __init__(
        self, *, memory_mib: int = DEFAULT_MEMORY_MIB, accounting: bool = True, monitor: bool = True
    ) -> None:
        """accounting: count simulated cycles. monitor: run the secure monitor over
        ring-0 guest code (machine/monitor.py); only measurements of ring-3 code that
        need the last bit of speed turn it off."""
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._uch = self.uc._uch  # the engine handle, for the run loop's direct calls
        self.uc.ctl_set_cpu_model(UC_CPU_X86_SKYLAKE_SERVER)
        self.uc.ctl_set_tlb_mode(UC_TLB_CPU)
        self.mem = PhysMem(self.uc, memory_mib << 20)
        self.frames = FrameAllocator(self.mem)
        self._page_tables: dict[int, PageTable] = {}
        self._tlb_stale = True
        self._loaded_cr3 = -1
        self._loaded_pkru = -1
        self._pending: tuple[ExitKind, int] | None = None
        self._undo: dict[Reg, int] = {}  # registers to put back after a refused instruction
        self._space: PageTable | None = None  # the page table of the running context
        self.eptp = EptpLists()  # VMFUNC's EPTP lists (machine/vmfunc.py), for SkyBridge
        self.kernel_space = self.new_page_table()
        self.accounting: Accounting | None = None
        self._decoder: Accounting | None = None  # decodes blocks: for accounting, monitor
        self.monitor: Monitor | None = None
        self._install_hooks(accounting, monitor)
        self._map_kernel_pages()
        privilege.configure(
            self.uc,
            cr3=self.kernel_space.root,
            gdt_vaddr=KERNEL_DATA,
            syscall_entry=SYSCALL_ENTRY_AT,
        )
        self._space = self.kernel_space
        self.layout, self._templates = self._calibrate_and_capture_rings()
        self._zeroed: dict[int, CpuContext] = {}
        for boot_only in (KERNEL_TEXT, KERNEL_STUBS):
            frame = self.kernel_space.unmap(boot_only)
            if frame is not None:
                self.frames.free(frame)
        self.code_changed(self.kernel_space)
        if self._decoder is not None:
            self._decoder.reset()  # the clock starts when guests can run

    # -- boot -----------------------------------------------------------------------

    def _install_hooks(self, accounting: bool, monitor: bool) -> None:
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_INSN, self._on_port_in, None, 1, 0, UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_port_out, None, 1, 0, UC_X86_INS_OUT)
        self._hook_time_stamp()
        if accounting or monitor:
            self.monitor = Monitor() if monitor else None
            self._decoder = accounting_class()(
                self._read_running_code, counting=accounting, monitor=self.monitor
            )
            self.accounting = self._decoder if accounting else None
            self._decoder.install(self.uc)

    def _hook_time_stamp(self) -> None:
        """rdtsc and rdtscp read the machine's clock (see `clock`), never the host's TSC.

        The binding's hook_add takes UC_HOOK_INSN only for IN, OUT, SYSCALL and CPUID,
        but the engine hooks RDTSC and RDTSCP too, with CPUID's callback type (tested in
        tests/machine/test_time_stamp.py); so these two go through the binding's helpers.
        """
        for insn, tsc_aux in ((UC_X86_INS_RDTSC, False), (UC_X86_INS_RDTSCP, True)):
            callback = uccallback(self.uc, HOOK_INSN_CPUID_CFUNC)(
                partial(self._on_time_stamp, tsc_aux=tsc_aux)
            )
            self.uc._Uc__do_hook_add(UC_HOOK_INSN, callback, 1, 0, ctypes.c_int(insn))  # type: ignore[attr-defined]

    def _map_kernel_pages(self) -> None:
        text = self._map_kernel_page(KERNEL_TEXT, KERNEL_CODE)
        self.mem.write(text, bytes.fromhex("48 0f 07"))  # sysretq
        self.mem.write(text + (SYSCALL_ENTRY_AT - KERNEL_TEXT), STUB_HALT)
        self._map_kernel_page(KERNEL_STUBS, KERNEL_CODE)
        gdt = self._map_kernel_page(KERNEL_DATA, KERNEL_RW)
        self.mem.write(gdt, privilege.gdt_bytes())

    def _map_kernel_page(self, vaddr: VirtAddr, flags: PageFlags) -> int:
        frame = self.frames.alloc()
        self.kernel_space.map(vaddr, frame, flags)
        return frame

    def save_blob(self) -> bytes:
        context = self.uc.context_save()
        address = ctypes.cast(context.context, ctypes.c_void_p).value
        return ctypes.string_at(address, context.size)

    def run_ring0_stub(self, code: bytes, *, rax: int = 0, pkru: int | None = None) -> int | None:
        """Run machine-owned ring-0 code on the kernel page table (boot only).

        The stub first loads PKRU (if given) with a real wrpkru, then RAX, then `code`.
        Returns the vector of the exception the code raised, or None.
        """
        prologue = b"" if pkru is None else calibrate.wrpkru_stub(pkru)
        prologue += b"\x48\xb8" + rax.to_bytes(8, "little")  # mov rax, imm64
        stub = prologue + code
        frame = self.kernel_space.translate(KERNEL_STUBS)
        assert frame is not None
        self.mem.write(frame, stub + STUB_HALT)
        self.uc.ctl_flush_tb()
        self.uc.context_restore(self._ring0_boot)
        self._pending = None
        self._flush_tlb()
        self._emu_start(KERNEL_STUBS, KERNEL_STUBS + len(stub))
        pending, self._pending = self._pending, None
        return None if pending is None else pending[1]

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
        cs = calibrate.cs_selector_offset(
            ring0_blob, ring3_blob, privilege.KERNEL_CS, privilege.USER_CS
        )
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
        self.kernel_space.map(read_only, self.frames.alloc(), PageFlags())
        self.kernel_space.map(
            keyed, self.frames.alloc(), PageFlags(writable=True, user=True, pkey=1)
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
            frame = self.kernel_space.unmap(vaddr)
            assert frame is not None, "calibration pages are mapped"
            self.frames.free(frame)
        probe = self.frames.alloc()
        self.mem.write(probe, bytes.fromhex("0f 05 eb fe"))  # syscall; jmp $
        self.kernel_space.map(USER_PROBE, probe, PageFlags(user=True, executable=True))
        self.uc.context_restore(self._ring0_boot)
        self.uc.reg_write(UC_X86_REG_RCX, USER_PROBE)
        self.uc.reg_write(UC_X86_REG_R11, 0x202)
        self._pending = None
        self._flush_tlb()
        self.uc.ctl_flush_tb()
        self._emu_start(SYSRETQ_AT, 0)
        if self._pending != (ExitKind.SYSCALL, 0):
            raise KernelBug(f"boot: sysretq into ring 3 did not reach the probe ({self._pending})")
        self._pending = None
        ring3 = self.uc.context_save()
        self.kernel_space.unmap(USER_PROBE)
        self.frames.free(probe)
        return ring3

    # -- hooks (engine callback context: record and stop, nothing else) --------------

    def _on_syscall(self, uc: Uc, _data: object) -> None:
        # `_record` inlined: this runs on every kernel entry.
        if self._pending is None:
            self._pending = _SYSCALL_PENDING
        _uc_emu_stop(self._uch)

    def _on_interrupt(self, uc: Uc, vector: int, _data: object) -> None:
        self._record(uc, ExitKind.FAULT, vector)

    def _record(self, uc: Uc, kind: ExitKind, vector: int) -> None:
        if self._pending is None:
            self._pending = (kind, vector)
        uc.emu_stop()

    def _on_port_in(self, uc: Uc, _port: int, size: int, _data: object) -> int:
        if uc.reg_read(UC_X86_REG_CS) & 3:
            self._refuse_port_io(uc)
            return uc.reg_read(UC_X86_REG_RAX) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def _on_port_out(self, uc: Uc, _port: int, _size: int, _value: int, _data: object) -> None:
        if uc.reg_read(UC_X86_REG_CS) & 3:
            self._refuse_port_io(uc)

    def _on_time_stamp(self, uc: Uc, _key: object, *, tsc_aux: bool) -> int:
        """EDX:EAX = the clock (and ECX = IA32_TSC_AUX = 0 for rdtscp). Returning 1
        makes the engine skip the instruction, keeping these registers as its result."""
        now = self.clock()
        uc.reg_write(UC_X86_REG_RAX, now & 0xFFFF_FFFF)
        uc.reg_write(UC_X86_REG_RDX, (now >> 32) & 0xFFFF_FFFF)
        if tsc_aux:
            uc.reg_write(UC_X86_REG_RCX, 0)
        return 1

    def _refuse_port_io(self, uc: Uc) -> None:
        """#GP(0) at the I/O instruction, reported with RIP and RAX as they were."""
        if self._pending is None:
            self._undo = {
                Reg.RIP: uc.reg_read(UC_X86_REG_RIP),
                Reg.RAX: uc.reg_read(UC_X86_REG_RAX),
            }
        self._record(uc, ExitKind.FAULT, faults.GENERAL_PROTECTION)

    # -- address spaces -------------------------------------------------------------

    def new_page_table(self) -> PageTable:
        """An empty page table (the kernel's pages are mapped in kernel_space only)."""
        table = PageTable(self.mem, self.frames, self._page_changed)
        self._page_tables[table.root] = table
        return table

    def destroy_page_table(self, table: PageTable) -> None:
        if table is self.kernel_space:
            raise KernelBug("the kernel page table is never destroyed")
        del self._page_tables[table.root]
        if self._decoder is not None:
            self._decoder.forget_space(table.root)
        table.destroy()
        self._tlb_stale = True

    def _page_changed(self, _vaddr: VirtAddr) -> None:
        self._tlb_stale = True

    def code_changed(self, table: PageTable) -> None:
        """Call after writing instructions into frames: drop translated and decoded code."""
        self.uc.ctl_flush_tb()
        if self._decoder is not None:
            self._decoder.forget_space(table.root)

    def read_virtual(self, table: PageTable, vaddr: int, length: int) -> bytes:
        """Bytes at vaddr as `table` maps them, cut short at the first unmapped page (or
        non-canonical address: a guest that jumped there gets #GP, reported from here)."""
        out = bytearray()
        while len(out) < length and is_canonical(vaddr + len(out)):
            physical = table.translate(vaddr + len(out))
            if physical is None:
                break
            chunk = min(length - len(out), PAGE_SIZE - physical % PAGE_SIZE)
            out += self.mem.read(physical, chunk)
        return bytes(out)

    def _read_running_code(self, vaddr: int, length: int) -> bytes:
        space = self._space or self.kernel_space
        return self.read_virtual(space, vaddr, length)

    # -- threads --------------------------------------------------------------------

    def new_context(
        self, *, ring: int, page_table: PageTable, rip: int, rsp: int, pkru: int = 0
    ) -> CpuContext:
        """A fresh thread state in `ring` (0 or 3): all registers zero but these."""
        if ring not in self._templates:
            raise ValueError(f"ring must be 0 or 3, not {ring}")
        context = CpuContext(self.uc.context_save(), self.layout)
        return self.reset_context(
            context, ring=ring, page_table=page_table, rip=rip, rsp=rsp, pkru=pkru
        )

    def reset_context(
        self,
        context: CpuContext,
        *,
        ring: int,
        page_table: PageTable,
        rip: int,
        rsp: int,
        pkru: int = 0,
    ) -> CpuContext:
        """Make `context` what `new_context` would return, reusing its memory."""
        context.copy_from(self._zeroed_template(ring))
        context[Reg.CR3] = page_table.root
        context.eptp_home = page_table.root
        context.rip = rip
        context[Reg.RSP] = rsp
        context.pkru = pkru
        return context

    def _zeroed_template(self, ring: int) -> CpuContext:
        """The ring's template with every register of `Reg` zero (made once per ring)."""
        zeroed = self._zeroed.get(ring)
        if zeroed is None:
            zeroed = CpuContext(self.uc.context_save(), self.layout)
            zeroed.copy_from(self._templates[ring])
            for reg in Reg:
                zeroed[reg] = 0
            self._zeroed[ring] = zeroed
        return zeroed

    def set_paging_controls(
        self, context: CpuContext, *, write_protect: bool, protection_keys: bool
    ) -> None:
        """Set CR0.WP and CR4.PKE in a saved context.

        For the tests of the access rules only: every context the kernel creates keeps
        both set, and the secure monitor treats clearing either as an attack.
        """
        self.uc.context_restore(context.uc_context)
        cr0 = self.uc.reg_read(UC_X86_REG_CR0)
        cr4 = self.uc.reg_read(UC_X86_REG_CR4)
        cr0 = cr0 | privilege.CR0_WP if write_protect else cr0 & ~privilege.CR0_WP
        cr4 = cr4 | privilege.CR4_PKE if protection_keys else cr4 & ~privilege.CR4_PKE
        self.uc.reg_write(UC_X86_REG_CR0, cr0)
        self.uc.reg_write(UC_X86_REG_CR4, cr4)
        self.uc.context_update(context.uc_context)
        self._tlb_stale = True

    def run(self, context: CpuContext, *, budget: int = 0, stop_at: int = 0) -> Exit:
        """Resume `context` until it enters the kernel, faults, or spends `budget`.

        budget: at most that many instructions (0: no limit). stop_at: an address at
        which to stop before executing it (RETURNED), e.g. the return address of ring-0
        code the kernel called; keep it off the first byte of a page (the engine reads
        the byte before a stop address, faulting if that page is unmapped). On return
        the context holds the thread's state at the exit (for a syscall, RIP is past it).
        """
        monitor = self.monitor
        if monitor is not None:
            monitor.armed = context.cpl == 0
        start = self._instructions()
        result = self._run_once(context, budget, stop_at)
        while result is None:  # an emulated vmfunc (machine/vmfunc.py): carry on
            # The budget spans the whole run; without a block hook there is no count
            # to go on, so the slice ends here (a vmfunc loop cannot hold the CPU).
            left = budget - (self._instructions() - start) if budget else 0
            if budget and (left <= 0 or self._decoder is None):
                return _PREEMPTED
            result = self._run_once(context, left, stop_at)
        if monitor is not None and monitor.trap is not None:
            return self._vm_exit(context, monitor.take())
        return result

    def _instructions(self) -> int:
        return 0 if self._decoder is None else self._decoder.instructions

    def _vm_exit(self, context: CpuContext, trap: tuple[int, str]) -> Exit:
        """The monitor stopped the CPU before a block holding a privileged instruction:
        run the block up to that instruction, then report the VM exit there."""
        address, _name = trap
        assert self.monitor is not None
        if context.rip != address:
            self.monitor.allowed_block = context.rip
            # The engine honours a stop address only when it translates a block, and this
            # block was translated whole: drop it so the rerun stops at the instruction.
            self.uc.ctl_flush_tb()
            try:
                result = self._run_once(context, 0, address)
            finally:
                self.monitor.allowed_block = -1
            if result.kind is not ExitKind.RETURNED:
                return result  # faulted or entered the kernel before reaching it
        self.monitor.exits += 1
        self.charge("vm_exit")
        space = self._page_tables[context.cr3]
        instruction = faults.disassemble_one(self.read_virtual(space, address, 15), address)
        return Exit(
            ExitKind.FAULT, Fault(faults.VM_EXIT, address, context.cpl, context.pkru, instruction)
        )

    def _run_once(self, context: CpuContext, budget: int, stop_at: int) -> Exit | None:
        """One emu_start; None if it stopped at a vmfunc the machine has emulated."""
        rip = self._load(context)
        self._pending = None
        try:
            self._emu_start(rip, stop_at, budget)
        except UcError as error:
            self._save(context)
            if error.errno == UC_ERR_INSN_INVALID and self._vmfunc(context):
                return None
            return self._fault_exit(context, self._engine_error_fault(context, error))
        self._save(context)
        pending = self._pending
        if pending is None:
            if stop_at and context.rip == stop_at:
                return _RETURNED
            return _PREEMPTED if self._budget_spent(budget) else _HALTED
        self._pending = None
        if pending[0] is ExitKind.SYSCALL:
            return _SYSCALL
        if pending[1] == faults.INVALID_OPCODE and self._vmfunc(context):
            return None
        return self._fault_exit(context, self._decode_fault(context, pending[1]))

    def _vmfunc(self, context: CpuContext) -> bool:
        """The engine refused an instruction (#UD): emulate it if it is a vmfunc the
        running thread's EPTP list allows (machine/vmfunc.py)."""
        return self.eptp.switch(context, self._read_running_code)

    def _emu_start(self, begin: int, until: int, budget: int = 0) -> None:
        """The one call of emu_start.

        Unicorn's `count` must be used on every run or on none: switching between the
        two deletes its counting hook and flushes translations, which makes the engine
        take a silent page fault at a stale address. So with a block hook (accounting,
        or the secure monitor alone, which still counts instructions) the hook enforces
        the budget and `count` is never used; with neither, `count` is always passed.
        (The engine's `count` calls a helper per instruction: far slower than the hook.)

        The engine is called directly, as the binding's `emu_start` would, without its
        wrapper (this runs twice per IPC round trip): same status check, and an exception
        raised in a Python hook is raised here.
        """
        uc, decoder = self.uc, self._decoder
        uc._hook_exception = None
        if decoder is not None:
            decoder.arm(budget)
            status = _uc_emu_start(self._uch, begin, until, 0, 0)
        else:
            status = _uc_emu_start(self._uch, begin, until, 0, budget or UNLIMITED_COUNT)
        if status != UC_ERR_OK:
            raise UcError(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception
        if decoder is not None:
            decoder.check()

    def _budget_spent(self, budget: int) -> bool:
        if self._decoder is not None:
            return self._decoder.deadline_reached
        return budget > 0

    def _save(self, context: CpuContext) -> None:
        status = _uc_context_save(self._uch, context.uc_context.context)
        if status != UC_ERR_OK:
            raise UcError(status)
        if self._undo:
            for reg, value in self._undo.items():
                context[reg] = value
            self._undo = {}
        self._loaded_cr3 = context.cr3
        self._loaded_pkru = context.pkru

    def _fault_exit(self, context: CpuContext, fault: Fault) -> Exit:
        context.end_exception()
        return Exit(ExitKind.FAULT, fault)

    def _load(self, context: CpuContext) -> int:
        """Put `context` into the CPU (flushing the TLB only if its CR3 or PKRU differ from
        what the CPU last ran with, or a page-table edit asked for it); its RIP."""
        status = _uc_context_restore(self._uch, context.uc_context.context)
        if status != UC_ERR_OK:
            raise UcError(status)
        cr3 = context.cr3
        if self._tlb_stale or cr3 != self._loaded_cr3 or context.pkru != self._loaded_pkru:
            self._flush_tlb()
        space = self._page_tables.get(cr3)
        if space is None:
            raise KernelBug(f"context runs on unknown page table {cr3:#x}")
        if space is not self._space:
            if self._decoder is not None:
                self._decoder.select_space(cr3)
            self._space = space
        return context.rip

    def _flush_tlb(self) -> None:
        # uc_ctl called directly: the binding's ctl() wrapper costs more than the flush.
        status = _uc_ctl(self._uch, _TLB_FLUSH)
        if status != UC_ERR_OK:
            raise UcError(status)
        self._tlb_stale = False

    # -- faults ---------------------------------------------------------------------

    def _decode_fault(self, context: CpuContext, vector: int) -> Fault:
        space = self._page_tables[context.cr3]
        return faults.decode(
            vector,
            rip=context.rip,
            cpl=context.cpl,
            pkru=context.pkru,
            error_code=context.error_code,
            cr2=self.uc.reg_read(UC_X86_REG_CR2),
            lookup=space.lookup,
            read_code=lambda va, n: self.read_virtual(space, va, n),
        )

    def halt_fault(self, context: CpuContext) -> Fault:
        """The report for a context whose CPU stopped at a ring-0 `hlt` (RIP is past it)."""
        space = self._page_tables[context.cr3]
        rip = context.rip - 1
        return Fault(
            faults.HALT,
            rip,
            context.cpl,
            context.pkru,
            faults.disassemble_one(self.read_virtual(space, rip, 15), rip),
        )

    def _engine_error_fault(self, context: CpuContext, error: UcError) -> Fault:
        if error.errno == UC_ERR_INSN_INVALID:
            return self._decode_fault(context, faults.INVALID_OPCODE)
        # The engine refused something the hardware would turn into a machine check
        # (e.g. a page-table entry pointing past the end of RAM).
        space = self._page_tables[context.cr3]
        code = self.read_virtual(space, context.rip, 15)
        return Fault(
            18,
            context.rip,
            context.cpl,
            context.pkru,
            f"{faults.disassemble_one(code, context.rip)} (engine: {error})",
        )

    # -- accounting -----------------------------------------------------------------

    def tally(self) -> Tally:
        return Tally() if self.accounting is None else self.accounting.tally()

    def clock(self) -> int:
        """The machine's time: what rdtsc returns and what run budgets are counted in.

        Simulated cycles with accounting on; with it off, the instructions of the blocks
        executed so far (the secure monitor's block hook counts them; a machine with
        neither accounting nor monitor has no clock and reads 0). Deterministic either
        way, and it advances a block at a time: a block's count is added when it starts.
        """
        decoder = self._decoder
        if decoder is None:
            return 0
        return decoder.cycles if decoder.counting else decoder.instructions

    def charge(self, event: str, times: int = 1) -> None:
        if self.accounting is not None:
            self.accounting.charge(event, times)

    def charge_all(self, charges: Charges) -> None:
        """Charge a path's fixed events at once (accounting.Charges)."""
        if self.accounting is not None:
            self.accounting.charge_all(charges)

    def charge_in(self, category: str, charges: Charges) -> None:
        """Charge events to `category` without changing where later charges go."""
        if self.accounting is not None:
            self.accounting.charge_in(category, charges)

    def attribute(self, category: str, start: int, end: int) -> None:
        """Count the cycles of code in [start, end) under `category` (accounting.py)."""
        if self.accounting is not None:
            self.accounting.attribute(category, start, end)

    def charge_to(self, category: str) -> str:
        """Send later charges to `category`; returns the previous one."""
        return "" if self.accounting is None else self.accounting.charge_to(category)

    def reattribute(self, address: int, category: str, cycles: int) -> None:
        if self.accounting is not None:
            self.accounting.reattribute(address, category, cycles)
