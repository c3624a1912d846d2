"""A hardware thread's saved CPU state: a Unicorn context blob with a typed view.

The kernel switches threads by restoring a whole saved context (0.8 us) rather than
writing registers one by one through the binding (2 us each), and reads or writes a
thread's registers in place, through `struct` on the blob. Where each register lives in
the blob is not a published interface: `calibrate.py` finds every offset at boot by
writing known values through the engine and locating them, so nothing is hard-coded.

Invariants:
  - A CpuContext holds everything the CPU needs to resume the thread: registers, RIP,
    CR3 (its page table), PKRU, and the privilege level (CPL is part of the saved
    segment state; it changes only by a real sysretq at boot or by restoring a context
    derived from one, see rings.py).
  - Only the Machine restores a context into the CPU; the kernel edits contexts only
    while their thread is not running.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from enum import IntEnum

from unicorn.unicorn import UcContext

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class Reg(IntEnum):
    """The registers a kernel reads and writes in a saved context."""

    RAX = 0
    RCX = 1
    RDX = 2
    RBX = 3
    RSP = 4
    RBP = 5
    RSI = 6
    RDI = 7
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15
    RIP = 16
    CR3 = 17
    FS_BASE = 18


_RIP, _CR3 = int(Reg.RIP), int(Reg.CR3)  # plain ints index a tuple faster than IntEnums
SYSCALL_ARG_REGS = (Reg.RDI, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8, Reg.R9)
_ARG_INDEXES = tuple(int(reg) for reg in SYSCALL_ARG_REGS)
_unpack_u64 = _U64.unpack_from  # bound once: these are the kernel's hottest calls
_pack_u64 = _U64.pack_into
_GPRS = struct.Struct("<16Q")  # RAX..R15, where the engine keeps them in Reg's order


@dataclass(frozen=True, slots=True)
class ContextLayout:
    """Byte offsets inside a context blob (found by calibration, never hard-coded)."""

    size: int
    regs: tuple[int, ...]  # indexed by Reg, each a 64-bit field
    pkru: int  # 32-bit
    error_code: int  # 32-bit, the last exception's error code
    exception_in_flight: int  # 32-bit, -1 when none (QEMU's double-fault tracking)
    cs_selector: int  # 32-bit; its low two bits are the CPL

    def gprs_offset(self) -> int:
        """Where RAX..R15 start if the engine keeps them contiguous in Reg's order, else -1."""
        base = self.regs[Reg.RAX]
        together = all(self.regs[reg] == base + 8 * reg for reg in Reg if reg <= Reg.R15)
        return base if together else -1


class CpuContext:
    """One saved CPU state, editable in place."""

    __slots__ = ("_gprs_at", "_regs", "_view", "eptp_home", "layout", "uc_context")

    def __init__(self, uc_context: UcContext, layout: ContextLayout) -> None:
        self.uc_context = uc_context
        self.layout = layout
        # The page-table root of the address space this thread belongs to: whose EPTP
        # list its VMFUNCs use (machine/vmfunc.py); set by Machine.reset_context.
        self.eptp_home = 0
        self._regs = layout.regs  # read on every register access: one attribute, not two
        self._gprs_at = layout.gprs_offset()
        address = ctypes.cast(uc_context.context, ctypes.c_void_p).value
        buffer = (ctypes.c_ubyte * layout.size).from_address(address)
        self._view = memoryview(buffer).cast("B")

    def __getitem__(self, reg: Reg) -> int:
        return _unpack_u64(self._view, self._regs[reg])[0]

    def __setitem__(self, reg: Reg, value: int) -> None:
        _pack_u64(self._view, self._regs[reg], value & 0xFFFF_FFFF_FFFF_FFFF)

    @property
    def rip(self) -> int:
        return _unpack_u64(self._view, self._regs[_RIP])[0]  # not via []: read hot

    @rip.setter
    def rip(self, value: int) -> None:
        self[Reg.RIP] = value

    @property
    def cr3(self) -> int:
        return _unpack_u64(self._view, self._regs[_CR3])[0]

    @property
    def pkru(self) -> int:
        return _U32.unpack_from(self._view, self.layout.pkru)[0]

    @pkru.setter
    def pkru(self, value: int) -> None:
        _U32.pack_into(self._view, self.layout.pkru, value & 0xFFFF_FFFF)

    @property
    def error_code(self) -> int:
        return _U32.unpack_from(self._view, self.layout.error_code)[0]

    def end_exception(self) -> None:
        """Mark the last exception as delivered, as a real CPU does once its handler runs.

        The emulator does not deliver exceptions through an IDT, so without this the
        next fault of this thread would be escalated to #DF, then to a triple fault.
        """
        _U32.pack_into(self._view, self.layout.exception_in_flight, 0xFFFF_FFFF)

    @property
    def cpl(self) -> int:
        return _U32.unpack_from(self._view, self.layout.cs_selector)[0] & 3

    def syscall_args(self) -> tuple[int, ...]:
        """RDI, RSI, RDX, R10, R8, R9: read at once when the engine keeps the sixteen
        general registers together (one struct read instead of six)."""
        view = self._view
        if self._gprs_at >= 0:
            g = _GPRS.unpack_from(view, self._gprs_at)
            return (g[7], g[6], g[2], g[10], g[8], g[9])
        regs = self._regs
        return tuple(_unpack_u64(view, regs[reg])[0] for reg in _ARG_INDEXES)

    def set_registers(self, regs: tuple[Reg, ...], values: tuple[int, ...]) -> None:
        """Write several registers at once (an IPC path's message registers)."""
        view, offsets = self._view, self._regs
        for reg, value in zip(regs, values, strict=True):
            _pack_u64(view, offsets[reg], value & 0xFFFF_FFFF_FFFF_FFFF)

    def registers(self, regs: tuple[Reg, ...]) -> tuple[int, ...]:
        view, offsets = self._view, self._regs
        return tuple(_unpack_u64(view, offsets[reg])[0] for reg in regs)

    def copy_from(self, other: CpuContext) -> None:
        """Make this context an exact copy of `other` (both of the same machine)."""
        self._view[:] = other._view

    def raw(self) -> bytes:
        return bytes(self._view)
