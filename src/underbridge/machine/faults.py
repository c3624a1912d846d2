"""CPU exceptions decoded into one record: where a PKU fault (or any other) is explained.

A #PF is decoded from the hardware's own error code (P, W/R, U/S, RSVD, I/D, PK bits,
SDM Vol. 3A, 4.7), refined by a walk of the faulting page table: the error code says
"protection key" and the page's key and PKRU say whether AD or WD denied it. #GP, #UD
and the rest carry the faulting instruction, disassembled.

A Fault is a report, not an exception: the kernel terminates the guest that caused it
and goes on. Nothing here can fail on guest-controlled values (unmapped RIP, garbage
bytes): the worst case is an instruction shown as unreadable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from underbridge.machine import pkru as pkru_bits
from underbridge.machine.oracle import Access, Violation
from underbridge.machine.paging import Mapping

PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_RESERVED = 1 << 3
PF_FETCH = 1 << 4
PF_PKEY = 1 << 5

PAGE_FAULT = 14
GENERAL_PROTECTION = 13
INVALID_OPCODE = 6

VECTOR_NAMES: dict[int, tuple[str, str]] = {
    0: ("#DE", "divide error"),
    1: ("#DB", "debug"),
    3: ("#BP", "breakpoint"),
    4: ("#OF", "overflow"),
    5: ("#BR", "bound range exceeded"),
    6: ("#UD", "invalid opcode"),
    7: ("#NM", "device not available"),
    8: ("#DF", "double fault"),
    10: ("#TS", "invalid TSS"),
    11: ("#NP", "segment not present"),
    12: ("#SS", "stack-segment fault"),
    13: ("#GP", "general protection"),
    14: ("#PF", "page fault"),
    16: ("#MF", "x87 floating-point error"),
    17: ("#AC", "alignment check"),
    18: ("#MC", "machine check"),
    19: ("#XM", "SIMD floating-point exception"),
    21: ("#CP", "control protection"),
}
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
# Not an exception: the CPU stopped at a `hlt` executed in ring 0 by guest code (legal
# for the hardware; the secure monitor's business). Reported like a fault, with this
# pseudo-vector outside the architectural range, so the guest is terminated.
HALT = 256
VECTOR_NAMES[HALT] = ("HLT", "CPU halted by guest code in ring 0")
# Not an exception either: the secure monitor trapped a privileged instruction a ring-0
# guest was about to execute (machine/monitor.py).
VM_EXIT = 257
VECTOR_NAMES[VM_EXIT] = ("VMEXIT", "privileged instruction in ring 0, denied by the monitor")

_DISASSEMBLER = Cs(CS_ARCH_X86, CS_MODE_64)


@dataclass(frozen=True, slots=True)
class Fault:
    """One CPU exception raised by guest code."""

    vector: int
    rip: int
    cpl: int
    pkru: int
    instruction: str
    error_code: int | None = None
    address: int | None = None  # CR2, for a page fault
    access: Access | None = None
    reason: Violation | None = None

    @property
    def mnemonic(self) -> str:
        return VECTOR_NAMES.get(self.vector, (f"#{self.vector}", ""))[0]

    @property
    def name(self) -> str:
        return VECTOR_NAMES.get(self.vector, ("", f"interrupt {self.vector}"))[1]

    def describe(self) -> str:
        where = f"at rip {self.rip:#x} (ring {self.cpl}, pkru {self.pkru:#010x})"
        if self.vector == PAGE_FAULT and self.reason is not None and self.access is not None:
            return (
                f"{self.mnemonic} {self.access.value} of {self.address:#x}: "
                f"{self.reason.value}, {where}: {self.instruction}"
            )
        return f"{self.mnemonic} {self.name} {where}: {self.instruction}"

    def to_json(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "exception": self.mnemonic,
            "name": self.name,
            "rip": self.rip,
            "cpl": self.cpl,
            "pkru": self.pkru,
            "instruction": self.instruction,
            "error_code": self.error_code,
            "address": self.address,
            "access": None if self.access is None else self.access.value,
            "reason": None if self.reason is None else self.reason.name.lower(),
        }


def disassemble_one(code: bytes, address: int) -> str:
    """The first instruction in `code`, or a hex dump when it does not decode."""
    for insn in _DISASSEMBLER.disasm(code, address, count=1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return "(undecodable: " + (code[:15].hex(" ") or "no bytes") + ")"


def page_fault_access(error_code: int) -> Access:
    if error_code & PF_FETCH:
        return Access.FETCH
    return Access.WRITE if error_code & PF_WRITE else Access.READ


def page_fault_reason(error_code: int, cpl: int, pkru: int, leaf: Mapping | None) -> Violation:
    """Why the hardware refused, from its error code and the faulting page's leaf."""
    if error_code & PF_RESERVED:
        return Violation.RESERVED_BIT
    if not error_code & PF_PRESENT or leaf is None:
        return Violation.NOT_PRESENT
    if cpl == 3 and not leaf.flags.user:
        return Violation.USER_TO_SUPERVISOR
    if error_code & PF_FETCH:
        return Violation.FETCH_NX
    if error_code & PF_PKEY:
        if pkru_bits.access_disabled(pkru, leaf.flags.pkey):
            return Violation.PKEY_ACCESS_DISABLED
        return Violation.PKEY_WRITE_DISABLED
    return Violation.WRITE_READ_ONLY


def decode(
    vector: int,
    *,
    rip: int,
    cpl: int,
    pkru: int,
    error_code: int,
    cr2: int,
    lookup: Callable[[int], Mapping | None],
    read_code: Callable[[int, int], bytes],
) -> Fault:
    """Build the Fault record; `lookup` and `read_code` see the faulting page table."""
    instruction = disassemble_one(read_code(rip, 15), rip)
    code = error_code if vector in VECTORS_WITH_ERROR_CODE else None
    if vector != PAGE_FAULT:
        return Fault(vector, rip, cpl, pkru, instruction, error_code=code)
    leaf = lookup(cr2 & ~0xFFF)
    return Fault(
        vector,
        rip,
        cpl,
        pkru,
        instruction,
        error_code=error_code,
        address=cr2,
        access=page_fault_access(error_code),
        reason=page_fault_reason(error_code, cpl, pkru, leaf),
    )
