"""Simulated cycles: executed instructions counted per block, plus charged events.

A block-entry hook adds the block's static cost: one cycle per instruction, except an
instruction that is itself a costed primitive (wrpkru, vmfunc, syscall, sysret,
swapgs, mov to CR3), which adds its row of COSTS instead. Each distinct block is
decoded once (capstone) per address space; the hook itself does two dict lookups and
two additions. Python kernel work is charged by name with `charge`.

Invariants:
  - Counts depend only on which blocks executed and which events were charged, so the
    same run gives the same count every time.
  - A block is keyed by (address space, start address, size); the cache of an address
    space is dropped whenever code in it may have changed (Machine.code_changed).
  - A block cut short by a fault is still counted whole: deterministic, and at most
    one block off per fault.
  - The preemption budget is enforced here, at block granularity: once the deadline
    is reached, the CPU stops at the start of the next block, which is not counted
    (the engine does not run a block whose entry hook stopped it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn import Uc

from underbridge.machine.costs import COSTS
from underbridge.machine.monitor import Monitor
from underbridge.machine.privileged import privileged_name

_DISASSEMBLER = Cs(CS_ARCH_X86, CS_MODE_64)
NO_DEADLINE = 1 << 62

# Costed instructions, recognised by their encoding (legacy prefixes are not expected).
_COSTED_OPCODES: dict[bytes, str] = {
    bytes.fromhex("0f01ef"): "wrpkru",
    bytes.fromhex("0f01d4"): "vmfunc",
    bytes.fromhex("0f05"): "syscall",
    bytes.fromhex("0f07"): "sysret",
    bytes.fromhex("480f07"): "sysret",
    bytes.fromhex("0f01f8"): "swapgs",
}


def is_mov_to_cr3(encoding: bytes) -> bool:
    """`mov cr3, r64`: 0F 22 /r with ModRM.reg = 3, and REX.R clear (REX.R would mean CR11)."""
    rex = 0
    if encoding and 0x40 <= encoding[0] <= 0x4F:
        rex, encoding = encoding[0], encoding[1:]
    return (len(encoding) == 3 and encoding[:2] == b"\x0f\x22"
            and (encoding[2] >> 3) & 7 == 3 and not rex & 0x4)


def instruction_event(encoding: bytes) -> str | None:
    """The primitive an instruction is, if any (by its bytes)."""
    event = _COSTED_OPCODES.get(encoding)
    if event is None and is_mov_to_cr3(encoding):
        event = "cr3_write"
    return event


@dataclass(frozen=True, slots=True)
class BlockCost:
    size: int
    instructions: int
    cycles: int
    events: tuple[str, ...]
    trap: tuple[int, str] | None = None  # the first privileged instruction: address, name


def block_cost(code: bytes, address: int) -> BlockCost:
    """Decode a block once: its instruction count and static cycle cost."""
    count = 0
    cycles = 0
    events: list[str] = []
    trap: tuple[int, str] | None = None
    for insn_address, size, mnemonic, ops in _DISASSEMBLER.disasm_lite(code, address):
        count += 1
        event = instruction_event(code[insn_address - address : insn_address - address + size])
        if event is None:
            cycles += COSTS["instruction"].cycles
        else:
            cycles += COSTS[event].cycles
            events.append(event)
        if trap is None and (name := privileged_name(mnemonic, ops)) is not None:
            trap = (insn_address, name)
    return BlockCost(len(code), count, cycles, tuple(events), trap)


@dataclass(slots=True)
class Tally:
    """A snapshot of the counters; subtract two to measure a stretch of a run."""

    instructions: int = 0
    cycles: int = 0
    events: Counter[str] = field(default_factory=Counter)

    def __sub__(self, other: Tally) -> Tally:
        events = Counter(self.events)
        events.subtract(other.events)
        return Tally(self.instructions - other.instructions, self.cycles - other.cycles,
                     +events)


class Accounting:
    """The running count of simulated cycles for one machine."""

    def __init__(self, read_code: Callable[[int, int], bytes], *, counting: bool = True,
                 monitor: Monitor | None = None) -> None:
        self._read_code = read_code
        self.counting = counting
        self.monitor = monitor
        self._caches: dict[int, dict[int, BlockCost]] = {}
        self._blocks: dict[int, BlockCost] = {}
        self.instructions = 0
        self.block_cycles = 0
        self.block_events: Counter[str] = Counter()
        self.charged: Counter[str] = Counter()
        self.charged_cycles = 0
        self.deadline = NO_DEADLINE
        self.deadline_reached = False

    def reset(self) -> None:
        """Zero every counter (the decoded blocks stay: they are facts about code)."""
        self.instructions = self.block_cycles = self.charged_cycles = 0
        self.block_events.clear()
        self.charged.clear()

    def arm(self, budget: int) -> None:
        """Stop the CPU once `budget` more instructions have run (0: never)."""
        self.deadline = self.instructions + budget if budget else NO_DEADLINE
        self.deadline_reached = False

    @property
    def cycles(self) -> int:
        return self.block_cycles + self.charged_cycles

    def tally(self) -> Tally:
        events = self.block_events + self.charged
        return Tally(self.instructions, self.cycles, events)

    def charge(self, event: str, times: int = 1) -> None:
        """Add `times` occurrences of a primitive done by the (Python) kernel."""
        self.charged_cycles += COSTS[event].cycles * times
        self.charged[event] += times

    def select_space(self, cr3: int) -> None:
        """Count the following blocks against the address space rooted at cr3."""
        self._blocks = self._caches.setdefault(cr3, {})

    def forget_space(self, cr3: int) -> None:
        """Drop the decoded blocks of one address space (its code may have changed)."""
        cache = self._caches.get(cr3)
        if cache is not None:
            cache.clear()

    def on_block(self, uc: Uc, address: int, size: int, _data: object) -> None:
        """UC_HOOK_BLOCK callback: the hot path of accounting and of the secure monitor."""
        if self.instructions >= self.deadline:
            self.deadline_reached = True
            uc.emu_stop()
            return
        cost = self._blocks.get(address)
        if cost is None or cost.size != size:
            cost = block_cost(self._read_code(address, size), address)
            self._blocks[address] = cost
        monitor = self.monitor
        if (cost.trap is not None and monitor is not None and monitor.armed
                and address != monitor.allowed_block):
            monitor.trap = cost.trap  # stop before this block runs (see machine/monitor.py)
            uc.emu_stop()
            return
        if not self.counting:
            return
        self.instructions += cost.instructions
        self.block_cycles += cost.cycles
        if cost.events:
            self.block_events.update(cost.events)
