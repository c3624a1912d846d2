"""A second block hook, for traces only: each executed block's costed instructions.

The accounting decoder (accounting.py, or its C twin) counts costed instructions in
totals; a trace wants them one by one, in order, with the CPU state around them (which
PKRU a `wrpkru` installed). `BlockEventHook` is a Python UC_HOOK_BLOCK installed only
while a trace records (kernel/trace/), after the accounting hook, and removed with
`remove`; a machine that is not traced never has it, so tracing costs nothing when off.

Invariants:
  - It reads and reports; it never writes guest state, never stops the CPU and never
    charges a cycle, so a traced run has the simulated figures of an untraced one.
  - It sees exactly the blocks the accounting hook counts: the engine skips later hooks
    of a block whose earlier hook stopped the CPU (a spent budget, the secure monitor),
    and such a block is not counted either.
  - A block's events are a function of its bytes (`instruction_event`), so they are
    cached by the bytes themselves: rewritten code is decoded anew, never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import UC_HOOK_BLOCK, Uc

from underbridge.machine.accounting import block_cost
from underbridge.machine.context import ContextLayout, CpuContext

BlockEvents = Callable[[int, tuple[str, ...]], None]  # (block address, its events)


class BlockEventHook:
    """Calls `report(address, events)` for every executed block holding a costed
    instruction (wrpkru, vmfunc, syscall, sysret, swapgs, mov to CR3), and `each_block()`
    before it for every block (a tracer settles what the previous block did)."""

    def __init__(
        self,
        uc: Uc,
        layout: ContextLayout,
        read_code: Callable[[int, int], bytes],
        report: BlockEvents,
        each_block: Callable[[], None],
    ) -> None:
        self._uc = uc
        self._layout = layout
        self._read_code = read_code
        self._report = report
        self._each_block = each_block
        self._events: dict[bytes, tuple[str, ...]] = {}
        self._handle = uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    def remove(self) -> None:
        self._uc.hook_del(self._handle)

    def cpu_pkru(self) -> int:
        """The PKRU the CPU holds now (a context save: the engine has no PKRU register)."""
        return CpuContext(self._uc.context_save(), self._layout).pkru

    def _on_block(self, _uc: Uc, address: int, size: int, _data: object) -> None:
        self._each_block()
        code = self._read_code(address, size)
        events = self._events.get(code)
        if events is None:
            events = self._events[code] = block_cost(code, address).events
        if events:
            self._report(address, events)
