"""Simulated cycles: executed instructions counted per block, plus charged events.

A block-entry hook adds the block's static cost: one cycle per instruction, except an
instruction that is itself a costed primitive (wrpkru, vmfunc, syscall, sysret,
swapgs, mov to CR3), which adds its row of COSTS instead. Each distinct block is
decoded once (capstone) per address space; the hook itself does two dict lookups and
two additions. Python kernel work is charged by name with `charge`. This class is the
reference; the machine normally runs `NativeAccounting` (native_accounting.py), which
does the per-block work in C with the same counts.

Invariants:
  - Counts depend only on which blocks executed and which events were charged, so the
    same run gives the same count every time.
  - A block is keyed by (address space, start address, size); the cache of an address
    space is dropped whenever code in it may have changed (Machine.code_changed).
  - A block cut short by a fault is still counted whole: deterministic, and at most
    one block off per fault.
  - Attribution: every counted cycle also lands in exactly one category. A block's
    cycles go to the category of the code range holding its start address (`attribute`;
    "other" when none does), a charged event's to the category the kernel names with
    `charge_to` ("kernel" unless told otherwise). Categories never change a total.
  - With counting off (the secure monitor only), executed instructions are still
    counted: they are the machine's clock then (Machine.clock).
  - The preemption budget is enforced here, at block granularity: once the deadline
    is reached, the CPU stops at the start of the next block, which is not counted
    (the engine does not run a block whose entry hook stopped it).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn import UC_HOOK_BLOCK, Uc

from underbridge.machine.costs import COSTS
from underbridge.machine.monitor import Monitor
from underbridge.machine.privileged_insns import privileged_name

_DISASSEMBLER = Cs(CS_ARCH_X86, CS_MODE_64)
_CYCLES = {name: cost.cycles for name, cost in COSTS.items()}  # charge() is hot
NO_DEADLINE = 1 << 62
OTHER, KERNEL = "other", "kernel"  # the categories every machine has

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
    return (
        len(encoding) == 3
        and encoding[:2] == b"\x0f\x22"
        and (encoding[2] >> 3) & 7 == 3
        and not rex & 0x4
    )


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
    category: int = 0  # index into Accounting.categories


def block_cost(code: bytes, address: int, category: int = 0) -> BlockCost:
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
    return BlockCost(len(code), count, cycles, tuple(events), trap, category)


@dataclass(frozen=True, slots=True, eq=False)
class Charges:
    """A kernel path's fixed events, summed once: charged in one call (`charge_all`)
    with the same counts as charging each event by name. Compared by identity: each is
    made once, as a constant of the path it describes."""

    events: tuple[tuple[str, int], ...]
    cycles: int

    @classmethod
    def of(cls, *events: str | tuple[str, int]) -> Charges:
        """`Charges.of("sysret", ("cr3_write", 2))`: each event once, or (event, times)."""
        counted = tuple((e, 1) if isinstance(e, str) else e for e in events)
        return cls(counted, sum(_CYCLES[event] * times for event, times in counted))


@dataclass(slots=True)
class Tally:
    """A snapshot of the counters; subtract two to measure a stretch of a run."""

    instructions: int = 0
    cycles: int = 0
    events: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)  # cycles

    def __sub__(self, other: Tally) -> Tally:
        events = Counter(self.events)
        events.subtract(other.events)
        by_category = Counter(self.by_category)
        by_category.subtract(other.by_category)
        return Tally(
            self.instructions - other.instructions,
            self.cycles - other.cycles,
            +events,
            +by_category,
        )


class Accounting:
    """The running count of simulated cycles for one machine."""

    def __init__(
        self,
        read_code: Callable[[int, int], bytes],
        *,
        counting: bool = True,
        monitor: Monitor | None = None,
    ) -> None:
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
        self.categories: list[str] = [OTHER, KERNEL]
        self._category_ids = {name: index for index, name in enumerate(self.categories)}
        self.category_cycles: list[int] = [0, 0]
        self._ranges: list[tuple[int, int, int]] = []  # sorted (start, end, category)
        self._category_at: dict[int, int] = {}  # category_of, remembered until `attribute`
        # charge_all's counts per (path, category), folded into `charged` and the
        # category totals when they are read (`_fold`): one dict update per path taken.
        self._paths: dict[tuple[Charges, int], int] = {}
        self._charge_category = 1

    def reset(self) -> None:
        """Zero every counter (the decoded blocks stay: they are facts about code)."""
        self.instructions = self.block_cycles = self.charged_cycles = 0
        self.block_events.clear()
        self.charged.clear()
        self._paths.clear()
        self.category_cycles = [0] * len(self.categories)

    # -- attribution -----------------------------------------------------------------

    def category_index(self, name: str) -> int:
        index = self._category_ids.get(name)
        if index is None:
            index = self._category_ids[name] = self._new_category(name)
        return index

    def _new_category(self, name: str) -> int:
        self.categories.append(name)
        self.category_cycles.append(0)
        return len(self.categories) - 1

    def attribute(self, name: str, start: int, end: int) -> None:
        """Count blocks starting in [start, end) under category `name` from now on."""
        if not start < end or any(s < end and start < e for s, e, _ in self._ranges):
            raise ValueError(f"bad or overlapping attribution range {start:#x}-{end:#x}")
        bisect.insort(self._ranges, (start, end, self.category_index(name)))
        self._category_at.clear()
        for cache in self._caches.values():
            cache.clear()  # decoded blocks carry their category

    def category_of(self, address: int) -> int:
        category = self._category_at.get(address)
        if category is None:
            category = self._category_at[address] = self._range_category(address)
        return category

    def _range_category(self, address: int) -> int:
        index = bisect.bisect_right(self._ranges, (address, 1 << 64, 0)) - 1
        if index >= 0 and self._ranges[index][0] <= address < self._ranges[index][1]:
            return self._ranges[index][2]
        return 0

    def charge_to(self, name: str) -> str:
        """Send later charges to category `name`; returns the previous one."""
        previous = self.categories[self._charge_category]
        self._charge_category = self.category_index(name)
        return previous

    def reattribute(self, address: int, name: str, cycles: int) -> None:
        """Move `cycles` already counted for the code at `address` to category `name`
        (the kernel moves an IPC syscall instruction's cost from the caller to IPC)."""
        self.category_cycles[self.category_of(address)] -= cycles
        self.category_cycles[self.category_index(name)] += cycles

    def arm(self, budget: int) -> None:
        """Stop the CPU once `budget` more instructions have run (0: never)."""
        self.deadline = self.instructions + budget if budget else NO_DEADLINE
        self.deadline_reached = False

    @property
    def cycles(self) -> int:
        return self.block_cycles + self.charged_cycles

    def tally(self) -> Tally:
        self._fold()
        events = self.block_events + self.charged
        by_category = Counter(dict(zip(self.categories, self.category_cycles, strict=True)))
        return Tally(self.instructions, self.cycles, events, +by_category)

    def charge(self, event: str, times: int = 1) -> None:
        """Add `times` occurrences of a primitive done by the (Python) kernel."""
        cycles = _CYCLES[event] * times
        self.charged_cycles += cycles
        self.charged[event] += times
        self.category_cycles[self._charge_category] += cycles

    def charge_all(self, charges: Charges) -> None:
        """`charge` each of a path's events, in one call. The total is added now (it is
        the clock); the per-event and per-category counts when next read (`_fold`)."""
        self.charged_cycles += charges.cycles
        key = (charges, self._charge_category)
        paths = self._paths
        paths[key] = paths.get(key, 0) + 1

    def _fold(self) -> None:
        """Add the paths charged so far to the event and category counts."""
        charged, category_cycles = self.charged, self.category_cycles
        for (charges, category), count in self._paths.items():
            for event, times in charges.events:
                charged[event] += times * count
            category_cycles[category] += charges.cycles * count
        self._paths.clear()

    def charge_in(self, name: str, charges: Charges) -> None:
        """`charge_all` under category `name`, leaving the current category as it is."""
        previous = self._charge_category
        self._charge_category = self.category_index(name)
        try:
            self.charge_all(charges)
        finally:
            self._charge_category = previous

    def select_space(self, cr3: int) -> None:
        """Count the following blocks against the address space rooted at cr3."""
        self._blocks = self._caches.setdefault(cr3, {})

    def forget_space(self, cr3: int) -> None:
        """Drop the decoded blocks of one address space (its code may have changed)."""
        cache = self._caches.get(cr3)
        if cache is not None:
            cache.clear()

    def install(self, uc: Uc) -> None:
        """Register the block hook on `uc`."""
        uc.hook_add(UC_HOOK_BLOCK, self.on_block)

    def check(self) -> None:
        """Raise what a hook callback raised (the binding raises for Python hooks itself)."""

    def on_block(self, uc: Uc, address: int, size: int, _data: object) -> None:
        """UC_HOOK_BLOCK callback: the hot path of accounting and of the secure monitor.

        The reference implementation; native_accounting.py does the same in C."""
        if self.instructions >= self.deadline:
            self.deadline_reached = True
            uc.emu_stop()
            return
        cost = self._blocks.get(address)
        if cost is None or cost.size != size:
            cost = self._decode(address, size)
            self._blocks[address] = cost
        if self._monitor_stops(uc, address, cost):
            return
        self.instructions += cost.instructions  # the machine's clock even when not counting
        if not self.counting:
            return
        self.block_cycles += cost.cycles
        self.category_cycles[cost.category] += cost.cycles
        if cost.events:
            self.block_events.update(cost.events)

    def _decode(self, address: int, size: int) -> BlockCost:
        return block_cost(self._read_code(address, size), address, self.category_of(address))

    def _monitor_stops(self, uc: Uc, address: int, cost: BlockCost) -> bool:
        """Stop the CPU before a ring-0 block holding a privileged instruction."""
        monitor = self.monitor
        if (
            cost.trap is not None
            and monitor is not None
            and monitor.armed
            and address != monitor.allowed_block
        ):
            monitor.trap = cost.trap  # stop before this block runs (see machine/monitor.py)
            uc.emu_stop()
            return True
        return False
