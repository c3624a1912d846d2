"""Find where the CPU state lives inside a Unicorn context blob, by experiment.

The blob is QEMU's CPUX86State; its layout is not a published interface, so the
machine measures it at boot instead of trusting constants:
  - general registers, RIP, CR3, FS base: write a distinct value through the engine,
    save a context, find the value;
  - PKRU: execute a real `wrpkru` with a distinctive value, find it;
  - the exception error code: take three real page faults whose error codes the SDM
    fixes (write not-present = 0x2, write read-only = 0x3, read under PKRU.AD = 0x21)
    and keep the one offset holding all three;
  - the exception in flight (QEMU's double-fault tracking, which a real CPU clears
    once an exception is delivered): -1 before the first of those faults, 14 after;
  - the CS selector (whose low bits are the CPL): compare a ring-0 and a ring-3 context.
Every search must find exactly one offset, or the machine refuses to boot (KernelBug):
an emulator whose layout we cannot pin down is not one we can isolate guests on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Protocol

from unicorn import Uc
from unicorn.x86_const import (
    UC_X86_REG_CR3,
    UC_X86_REG_FS_BASE,
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_R10,
    UC_X86_REG_R11,
    UC_X86_REG_R12,
    UC_X86_REG_R13,
    UC_X86_REG_R14,
    UC_X86_REG_R15,
    UC_X86_REG_RAX,
    UC_X86_REG_RBP,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

from underbridge.errors import KernelBug
from underbridge.machine.context import Reg

UC_REGS: dict[Reg, int] = {
    Reg.RAX: UC_X86_REG_RAX,
    Reg.RCX: UC_X86_REG_RCX,
    Reg.RDX: UC_X86_REG_RDX,
    Reg.RBX: UC_X86_REG_RBX,
    Reg.RSP: UC_X86_REG_RSP,
    Reg.RBP: UC_X86_REG_RBP,
    Reg.RSI: UC_X86_REG_RSI,
    Reg.RDI: UC_X86_REG_RDI,
    Reg.R8: UC_X86_REG_R8,
    Reg.R9: UC_X86_REG_R9,
    Reg.R10: UC_X86_REG_R10,
    Reg.R11: UC_X86_REG_R11,
    Reg.R12: UC_X86_REG_R12,
    Reg.R13: UC_X86_REG_R13,
    Reg.R14: UC_X86_REG_R14,
    Reg.R15: UC_X86_REG_R15,
    Reg.RIP: UC_X86_REG_RIP,
    Reg.CR3: UC_X86_REG_CR3,
    Reg.FS_BASE: UC_X86_REG_FS_BASE,
}

PKRU_PROBE = 0x5A3C_96C4
# The three page faults, as (error code, mov instruction, target page) for probe stubs.
STORE_RCX_AT_RAX = bytes.fromhex("48 89 08")  # mov [rax], rcx
LOAD_RCX_FROM_RAX = bytes.fromhex("48 8b 08")  # mov rcx, [rax]


class BootCpu(Protocol):
    """What calibration needs from the machine while it boots (boot.Boot)."""

    uc: Uc

    def save_blob(self) -> bytes: ...

    def run_ring0_stub(self, code: bytes, *, rax: int = 0, pkru: int | None = None) -> int | None:
        """Run code in ring 0 on the kernel page table; the fault vector, or None."""
        ...


def wrpkru_stub(value: int) -> bytes:
    """mov eax, value; xor ecx, ecx; xor edx, edx; wrpkru; xor eax, eax."""
    return b"\xb8" + struct.pack("<I", value) + bytes.fromhex("31 c9 31 d2 0f 01 ef 31 c0")


def offsets_of(blob: bytes, value: int, width: int) -> set[int]:
    pattern = value.to_bytes(width, "little")
    found: set[int] = set()
    start = blob.find(pattern)
    while start != -1:
        if start % 4 == 0:
            found.add(start)
        start = blob.find(pattern, start + 1)
    return found


def _only(candidates: Iterable[int], what: str) -> int:
    found = sorted(candidates)
    if len(found) != 1:
        raise KernelBug(f"calibration: {what} found at {len(found)} offsets {found[:8]}")
    return found[0]


def register_offsets(cpu: BootCpu) -> tuple[int, ...]:
    """Offsets of the registers of Reg, in Reg order."""
    uc = cpu.uc
    saved = uc.context_save()
    patterns = {reg: 0x5EED_0000_0000_0000 | (reg.value << 24) | 0x00ABC000 for reg in Reg}
    for reg, value in patterns.items():
        uc.reg_write(UC_REGS[reg], value)
    blob = cpu.save_blob()
    uc.context_restore(saved)
    return tuple(_only(offsets_of(blob, patterns[reg], 8), reg.name) for reg in Reg)


def pkru_offset(cpu: BootCpu) -> int:
    cpu.run_ring0_stub(wrpkru_stub(PKRU_PROBE))
    found = offsets_of(cpu.save_blob(), PKRU_PROBE, 4)
    cpu.run_ring0_stub(wrpkru_stub(0))
    return _only(found, "PKRU")


def error_code_offsets(
    cpu: BootCpu, faults: Iterable[tuple[int, bytes, int, int]]
) -> tuple[int, int]:
    """(error code, exception in flight) offsets, from real page faults.

    faults: (expected error code, stub, target address, pkru), each taking a real #PF.
    """
    candidates: set[int] | None = None
    before = cpu.save_blob()
    in_flight: set[int] | None = None
    for expected, stub, target, pkru in faults:
        vector = cpu.run_ring0_stub(stub, rax=target, pkru=pkru)
        if vector != 14:
            raise KernelBug(
                f"calibration: expected #PF with error code {expected:#x}, got vector {vector}"
            )
        after = cpu.save_blob()
        found = offsets_of(after, expected, 4)
        candidates = found if candidates is None else candidates & found
        if in_flight is None:
            in_flight = offsets_of(before, 0xFFFF_FFFF, 4) & offsets_of(after, 14, 4)
    return (
        _only(candidates or (), "the exception error code"),
        _only(in_flight or (), "the exception in flight"),
    )


def cs_selector_offset(ring0_blob: bytes, ring3_blob: bytes, kernel_cs: int, user_cs: int) -> int:
    return _only(
        offsets_of(ring0_blob, kernel_cs, 4) & offsets_of(ring3_blob, user_cs, 4), "the CS selector"
    )
