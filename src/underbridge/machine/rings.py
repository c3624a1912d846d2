"""Privilege levels: the GDT, control registers, syscall MSRs, and the ring transitions.

The machine is configured as a 64-bit kernel would configure a Skylake server:
  CR0: PE, WP (ring-0 writes honour R/W and PKRU.WD), PG
  CR4: PAE, PKE (protection keys), OSFXSR, OSXSAVE; SMEP and SMAP stay OFF because
       in-kernel servers (UnderBridge) execute and access U=1 pages in ring 0
  EFER: LME/LMA (long mode), SCE (syscall/sysret), NXE (the XD bit)
  GDT: null, kernel code 0x08, kernel data 0x10, user code32 0x18, user data 0x20,
       user code64 0x28; STAR makes `syscall` load 0x08/0x10 and `sysretq` 0x2b/0x23

Ring transitions (Unicorn has no IDT delivery and emulates `syscall` only by a hook):
  - ring 0 -> ring 3: executing `sysretq` in ring 0 (done for real at boot; a thread's
    later entries into ring 3 restore a context derived from that state);
  - ring 3 -> kernel: `syscall` reaches the machine's hook, which stops the CPU and
    hands the event to the Python kernel (the model charges syscall/swapgs/sysret);
  - resuming a thread in ring 0 or 3: restore its saved context (context.py).
Who may call `configure`: the Machine, once, at boot.
"""

from __future__ import annotations

import struct

from unicorn import Uc
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_ES,
    UC_X86_REG_GDTR,
    UC_X86_REG_MSR,
    UC_X86_REG_SS,
)

KERNEL_CS = 0x08
KERNEL_SS = 0x10
USER_CS32 = 0x18 | 3
USER_SS = 0x20 | 3
USER_CS = 0x28 | 3

MSR_EFER = 0xC000_0080
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_SFMASK = 0xC000_0084

EFER_SCE = 1 << 0
EFER_NXE = 1 << 11
CR0_PE = 1 << 0
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_TF = 1 << 8
RFLAGS_AC = 1 << 18

STAR = ((USER_CS32 & ~3) << 48) | (KERNEL_CS << 32)


def segment_descriptor(*, code: bool, dpl: int, long_mode: bool = True) -> int:
    """A flat 64-bit GDT code or data descriptor (SDM Vol. 3A, 3.4.5)."""
    access = 0x80 | (dpl << 5) | 0x10 | (0x0A if code else 0x02)  # P, DPL, S, type
    flags = 0xA if (code and long_mode) else 0xC  # G + L, or G + D/B
    limit = 0xFFFFF
    return (limit & 0xFFFF) | (access << 40) | ((limit >> 16) << 48) | (flags << 52)


GDT_ENTRIES: tuple[int, ...] = (
    0,
    segment_descriptor(code=True, dpl=0),
    segment_descriptor(code=False, dpl=0),
    segment_descriptor(code=True, dpl=3, long_mode=False),
    segment_descriptor(code=False, dpl=3),
    segment_descriptor(code=True, dpl=3),
)


def gdt_bytes() -> bytes:
    return b"".join(struct.pack("<Q", entry) for entry in GDT_ENTRIES)


def configure(uc: Uc, *, cr3: int, gdt_vaddr: int, syscall_entry: int) -> None:
    """Put the CPU into the configuration this module's docstring states."""
    uc.reg_write(UC_X86_REG_GDTR, (0, gdt_vaddr, len(GDT_ENTRIES) * 8 - 1, 0))
    uc.reg_write(UC_X86_REG_CR3, cr3)
    cr4 = uc.reg_read(UC_X86_REG_CR4)
    uc.reg_write(
        UC_X86_REG_CR4,
        (cr4 | CR4_PAE | CR4_PKE | CR4_OSFXSR | CR4_OSXSAVE) & ~(CR4_SMEP | CR4_SMAP),
    )
    efer = uc.reg_read(UC_X86_REG_MSR, MSR_EFER)
    uc.reg_write(UC_X86_REG_MSR, (MSR_EFER, efer | EFER_SCE | EFER_NXE))
    uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | CR0_PE | CR0_WP | CR0_PG)
    uc.reg_write(UC_X86_REG_MSR, (MSR_STAR, STAR))
    uc.reg_write(UC_X86_REG_MSR, (MSR_LSTAR, syscall_entry))
    uc.reg_write(UC_X86_REG_MSR, (MSR_SFMASK, RFLAGS_IF | RFLAGS_DF | RFLAGS_TF | RFLAGS_AC))
    for reg, selector in (
        (UC_X86_REG_SS, KERNEL_SS),
        (UC_X86_REG_DS, KERNEL_SS),
        (UC_X86_REG_ES, KERNEL_SS),
        (UC_X86_REG_CS, KERNEL_CS),
    ):
        uc.reg_write(reg, selector)


def control_registers(uc: Uc) -> dict[str, int]:
    """The live CR0, CR3, CR4 and EFER (for checks and the secure monitor)."""
    return {
        "cr0": uc.reg_read(UC_X86_REG_CR0),
        "cr3": uc.reg_read(UC_X86_REG_CR3),
        "cr4": uc.reg_read(UC_X86_REG_CR4),
        "efer": uc.reg_read(UC_X86_REG_MSR, MSR_EFER),
    }
