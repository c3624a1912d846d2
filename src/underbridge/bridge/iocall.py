"""The kernel's checked port-I/O routines: what the rewriter turns `in`/`out` into.

A driver in kernel space that executes `in al, dx` or `out dx, al` itself pays a VM exit
each time (the secure monitor traps it and the kernel emulates it). Rewritten, it calls
one of these routines instead, which enter the kernel with the PORT_IO syscall: the
kernel checks the cap group's right to the port and performs the access.

Calling convention (as the instructions they replace): port in DX; `outb` writes AL;
`inb` sets AL. Every other register and the flags are preserved. A port the caller does
not hold ends in `ud2` (the kernel terminates the caller), as a trapped access would.

Invariant: the routines hold no privileged instruction, so a jump into their middle
gains nothing; they live in a key-0 page, executable and not writable by any server.
"""

from __future__ import annotations

from dataclasses import dataclass

from underbridge.abi.syscalls import Sys
from underbridge.guestbuild.asm import assemble

SAVED = ("rcx", "rdx", "rsi", "rdi", "r11")  # syscall clobbers RCX and R11; arguments
INB_OFFSET = 0x80  # outb at the start of the page, inb here


@dataclass(frozen=True, slots=True)
class IoRoutines:
    inb: int
    outb: int


def _call_port_io(write: bool) -> list[str]:
    value = "movzx esi, al" if write else "xor esi, esi"
    return [
        "pushfq",
        *(f"push {reg}" for reg in SAVED),
        "push rax",
        "movzx edi, dx",
        value,
        f"mov edx, {int(write)}",
        f"mov eax, {int(Sys.PORT_IO)}",
        "syscall",
        "test rax, rax",
        "js .Ldenied",
        "mov r11, rax",
        "pop rax",
    ]


def source() -> str:
    restore = [f"pop {reg}" for reg in reversed(SAVED)]
    lines = [
        "outb:",
        *_call_port_io(write=True),
        *restore,
        "popfq",
        "ret",
        f".org {INB_OFFSET:#x}, 0xcc",
        "inb:",
        *_call_port_io(write=False),
        "mov al, r11b",
        *restore,
        "popfq",
        "ret",
        ".Ldenied:",
        "ud2",
    ]
    return "\n".join(lines)


def generate(address: int) -> tuple[bytes, IoRoutines]:
    """The routines' code, assembled for `address`, and their entry points."""
    return assemble(source(), origin=address), IoRoutines(inb=address + INB_OFFSET, outb=address)
