"""Every exception type the package raises.

Three kinds, kept apart (seL4 / Hubris style):
  - UserError: bad input from the person at the keyboard (malformed ELF, missing gcc).
    The CLI prints its one-line message and hint and exits non-zero.
  - SyscallError: a guest asked for something it may not have; the guest gets a
    negative code back and goes on.
  - KernelBug: one of our own invariants is broken. Never caught.
A guest that breaks the hardware's rules is not an exception at all: the machine reports
a `machine.faults.Fault` record and the kernel terminates that guest.
"""

from __future__ import annotations


class UnderbridgeError(Exception):
    """Base of every exception raised by this package."""


class UserError(UnderbridgeError):
    """Bad input from the user; carries a hint on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class ToolchainError(UserError):
    """The guest toolchain is missing or a guest source does not compile."""


class ElfError(UserError):
    """A guest binary is not a loadable static x86-64 ELF executable."""


class ResourceExhausted(UserError):
    """The machine has no room for a new guest (physical frames, protection keys).

    `errno` is what a guest asking for the same thing gets back (ENOMEM, ENOKEY).
    """

    def __init__(self, message: str, hint: str = "", *, errno: int) -> None:
        super().__init__(message, hint)
        self.errno = errno


class SyscallError(UnderbridgeError):
    """A syscall failed; the guest receives -errno and continues."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"errno {errno}")
        self.errno = errno


class OutOfMemory(UnderbridgeError):
    """The physical frame allocator has no free frame left."""


class KernelBug(UnderbridgeError):
    """An invariant of our own is void. Never caught."""
