"""The Machine: one emulated x86-64 CPU with PKU, its RAM, and the kernel's page table.

This module holds the run loop: it owns the Unicorn handle and is the only caller of
`emu_start`. The Machine is put together from one module per concept:
  boot.py             configuring the rings, the kernel's boot pages, the ring templates
  hooks.py            the engine hooks (syscall, interrupt, port I/O, time stamp)
  address_spaces.py   the page-table registry and the TLB's coherence
  metering.py         the accounting facade (charges, attribution, the clock)
  exits.py            what a run ends in
Hooks only record what happened and stop the CPU; everything else (the kernel's
response) runs after `run` returns, outside the engine's callback context.

Invariants:
  - Before the CPU runs, the emulated TLB is coherent with every page table (`_load`;
    see address_spaces.py).
  - A guest cannot crash the Python process: a CPU exception, an invalid instruction
    or an engine error while guest code runs becomes an Exit carrying a Fault.
  - The secure monitor (monitor.py) stops ring-0 code before a privileged instruction;
    `run` reports it as a VM exit at that instruction (`_vm_exit`).
  - The run loop's hot path (`_run_once`, `_load`, `_save`, `_emu_start`, and the
    syscall hook) calls the engine directly and adds no Python frame or attribute
    lookup it can avoid: it runs twice per IPC round trip.
"""

from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_ERR_OK, UC_MODE_64, UC_TLB_CPU, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (
    UC_CPU_X86_SKYLAKE_SERVER,
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
    UC_X86_REG_CR4,
)

from underbridge.errors import KernelBug
from underbridge.machine import faults, rings
from underbridge.machine.address_spaces import AddressSpaces
from underbridge.machine.boot import Boot
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.exits import (
    HALTED_EXIT,
    PREEMPTED_EXIT,
    RETURNED_EXIT,
    SYSCALL_EXIT,
    Exit,
    ExitKind,
    Pending,
)
from underbridge.machine.faults import Fault
from underbridge.machine.hooks import EngineHooks
from underbridge.machine.metering import Metering
from underbridge.machine.paging import PageTable
from underbridge.machine.physmem import FrameAllocator, PhysMem
from underbridge.machine.vmfunc import EptpLists

DEFAULT_MEMORY_MIB = 64
UNLIMITED_COUNT = 1 << 62

__all__ = ["DEFAULT_MEMORY_MIB", "UNLIMITED_COUNT", "Exit", "ExitKind", "Machine"]

# The exits without a fault, as the run loop's globals (exits.py).
_SYSCALL, _RETURNED, _PREEMPTED, _HALTED = SYSCALL_EXIT, RETURNED_EXIT, PREEMPTED_EXIT, HALTED_EXIT
# The engine's entry points the run loop calls, bypassing the binding's wrappers.
_uc_emu_start = uclib.uc_emu_start
_uc_context_save = uclib.uc_context_save
_uc_context_restore = uclib.uc_context_restore


class Machine(EngineHooks, AddressSpaces, Metering):
    """One emulated computer. Many can live in one process; they share nothing.

    Its bases are the parts of one object, split by concept (hooks.py, address_spaces.py,
    metering.py); they share the state the run loop reads on every run. Boot (boot.py)
    is a separate object, used once by the constructor."""

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
        self._pending: Pending | None = None
        self._undo: dict[Reg, int] = {}  # registers to put back after a refused instruction
        self._space: PageTable | None = None  # the page table of the running context
        self.eptp = EptpLists()  # VMFUNC's EPTP lists (machine/vmfunc.py), for SkyBridge
        self.kernel_space = self.new_page_table()
        self._install_hooks()
        self._install_block_hook(accounting, monitor)
        self._space = self.kernel_space
        booting = Boot(self.uc, self.mem, self.frames, self.kernel_space, self._run_raw)
        self.layout, self._templates = booting.boot()
        self._zeroed: dict[int, CpuContext] = {}
        self.code_changed(self.kernel_space)
        if self._decoder is not None:
            self._decoder.reset()  # the clock starts when guests can run

    def _run_raw(self, begin: int, until: int) -> Pending | None:
        """Run the CPU as it stands, with a flushed TLB (boot only: no context, no
        budget); the event the hooks recorded, or None."""
        self._pending = None
        self._flush_tlb()
        self._emu_start(begin, until)
        pending, self._pending = self._pending, None
        return pending

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
        cr0 = cr0 | rings.CR0_WP if write_protect else cr0 & ~rings.CR0_WP
        cr4 = cr4 | rings.CR4_PKE if protection_keys else cr4 & ~rings.CR4_PKE
        self.uc.reg_write(UC_X86_REG_CR0, cr0)
        self.uc.reg_write(UC_X86_REG_CR4, cr4)
        self.uc.context_update(context.uc_context)
        self._tlb_stale = True

    # -- the run loop ---------------------------------------------------------------

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
        result = self._run_once(context, budget, stop_at)
        while result is None:  # an emulated vmfunc (machine/vmfunc.py): carry on
            budget = self._budget_left(budget)
            if budget < 0:
                return _PREEMPTED
            result = self._run_once(context, budget, stop_at)
        if monitor is not None and monitor.trap is not None:
            return self._vm_exit(context, monitor.take())
        return result

    def _budget_left(self, budget: int) -> int:
        """What is left of a run's budget after an emulated vmfunc: 0 for no limit, -1
        when it is spent. The budget spans the whole run; without a block hook there is
        no count to go on, so the slice ends (a vmfunc loop cannot hold the CPU)."""
        if not budget:
            return 0
        decoder = self._decoder
        if decoder is None:
            return -1
        left = decoder.deadline - decoder.instructions  # armed at the run's first start
        return left if left > 0 else -1

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
            if result is None:  # a vmfunc moved the thread: it runs on from there later
                return _PREEMPTED
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
