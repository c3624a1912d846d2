"""The engine hooks: syscall, interrupt, port I/O and time stamp (rdtsc, rdtscp).

A hook runs in the engine's callback context (STYLE.md, 9): it records what happened
in the machine's `_pending` and stops the CPU, nothing else; the kernel's response runs
after `Machine.run` returns. The first event of a run wins: `emu_stop` takes effect at
the end of the current translation block, so a later instruction of that block may
still raise another event, which is ignored.

`EngineHooks` is a base class of Machine, not a member: the run loop reads and clears
`_pending` on every run, and a separate object would cost it an attribute lookup per
kernel entry (the syscall hook is on every IPC path, as lean as the run loop).

Invariants:
  - Port I/O follows the SDM for IOPL 0 with no TSS I/O bitmap: #GP in ring 3 (the
    engine itself lets every I/O instruction through). The refused instruction has no
    effect and is the one reported (`_undo` restores RIP and RAX in the saved context);
    the instructions after it in the same translation block still run with the guest's
    own ring-3 rights before the CPU stops, and the kernel terminates the guest.
    (INS/OUTS touch memory before the engine's I/O hook, so a bad buffer there is
    reported as #PF where hardware reports #GP.) There are no devices: ring-0 IN reads
    all ones (a floating bus), OUT is discarded.
  - rdtsc and rdtscp return the machine's clock (`clock`), never the host's TSC: the
    same run reads the same values.
"""

from __future__ import annotations

import ctypes
from functools import partial

from unicorn import UC_HOOK_INSN, UC_HOOK_INTR, Uc
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_INS_RDTSC,
    UC_X86_INS_RDTSCP,
    UC_X86_INS_SYSCALL,
    UC_X86_REG_CS,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
)

from underbridge.machine import faults
from underbridge.machine.context import Reg
from underbridge.machine.exits import SYSCALL_PENDING, ExitKind, Pending

_uc_emu_stop = uclib.uc_emu_stop  # called directly by the syscall hook


class EngineHooks:
    """Machine's engine callbacks (the time stamp reads Machine.clock, metering.py).

    The Machine sets these attributes before `_install_hooks`."""

    uc: Uc
    _uch: int  # the engine handle
    _pending: Pending | None  # the run's first event; the run loop clears it
    _undo: dict[Reg, int]  # registers to put back after a refused instruction

    def _install_hooks(self) -> None:
        uc = self.uc
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_port_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_port_out, None, 1, 0, UC_X86_INS_OUT)
        self._hook_time_stamp()

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

    def _on_syscall(self, uc: Uc, _data: object) -> None:
        # `_record` inlined: this runs on every kernel entry.
        if self._pending is None:
            self._pending = SYSCALL_PENDING
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
