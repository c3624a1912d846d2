"""Machine's accounting facade: the clock, charged events, attribution, the tally.

The block hook (the decoder: accounting.py, or its C twin native_accounting.py) counts
executed blocks; this facade is how the kernel charges its own work and reads the
totals through the Machine, whether or not the machine counts. Every charge names a row
of costs.py. The decoder reads code through `_read_running_code` (address_spaces.py).

`Metering` is a base class of Machine, not a member: the kernel calls `machine.charge`
and friends on every IPC path, and the Machine's public API keeps these names.

Invariants:
  - With accounting off every charge is a no-op and `tally` is empty: the kernel
    charges unconditionally and never branches on whether it is measured.
  - The clock is deterministic (see `clock`): what rdtsc returns and what run budgets
    are counted in.
"""

from __future__ import annotations

import os

from unicorn import Uc

from underbridge.machine.accounting import Accounting, Charges, Tally
from underbridge.machine.monitor import Monitor


def accounting_class() -> type[Accounting]:
    """The block hook's implementation: native (C) unless $UNDERBRIDGE_ACCOUNTING=python
    asks for the Python reference, or gcc is missing. Both give the same counts."""
    if os.environ.get("UNDERBRIDGE_ACCOUNTING", "native") == "python":
        return Accounting
    from underbridge.machine import native_accounting

    return native_accounting.NativeAccounting if native_accounting.available() else Accounting


class Metering:
    """Machine's accounting facade. `_install_block_hook` sets these attributes."""

    uc: Uc
    accounting: Accounting | None  # the decoder when it counts cycles
    _decoder: Accounting | None  # decodes blocks: for accounting, monitor
    monitor: Monitor | None

    def _install_block_hook(self, accounting: bool, monitor: bool) -> None:
        """The block hook, if the machine counts cycles or runs the secure monitor."""
        self.accounting = self._decoder = self.monitor = None
        if accounting or monitor:
            self.monitor = Monitor() if monitor else None
            self._decoder = accounting_class()(
                self._read_running_code, counting=accounting, monitor=self.monitor
            )
            self.accounting = self._decoder if accounting else None
            self._decoder.install(self.uc)

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
