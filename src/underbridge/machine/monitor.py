"""The secure monitor: the hypervisor-mode component that deprivileges ring-0 guests.

The emulator has no VMX, so the monitor provides its equivalent. Every block of code the
CPU executes is decoded once, from the address where it really starts, by the machine's
block hook (so a jump into the middle of other instructions is decoded from there).
In ring 0, a block that holds a privileged instruction (machine/privileged_insns.py) stops the
CPU before the block runs; the machine then runs the block's earlier instructions, stops
at the privileged one, and reports a VM exit there. Each VM exit is charged "vm_exit".

Policy: denied, for every ring-0 guest. After boot no machine code of the kernel's own
executes a privileged instruction (the boot stubs are unmapped; gates use none), so
every one met in ring 0 is a guest's: the kernel terminates that guest.

Invariants it owns, as a consequence: CR0.WP and CR4.PKE stay set, and the syscall MSRs,
the GDT, the IDT and CR3 of ring-0 code stay the kernel's: no ring-0 guest instruction
that could change them ever completes. (`wrpkru` and XRSTOR cannot be trapped by a
hypervisor; in-kernel servers are scanned for them instead, bridge/scan.py.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Monitor:
    armed: bool = False  # the current run is in ring 0
    allowed_block: int = -1  # a block to run up to its trapped instruction, once
    trap: tuple[int, str] | None = None  # (address, name) that stopped the CPU
    exits: int = 0

    def take(self) -> tuple[int, str] | None:
        trap, self.trap = self.trap, None
        return trap
