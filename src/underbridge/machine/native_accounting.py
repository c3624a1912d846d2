"""Accounting whose per-block work runs in C: the same counts, without Python per block.

`native/blockhook.c` is compiled once by gcc into a shared library cached by content
under .underbridge-cache/native/ (like guest builds, toolchain.py) and registered with
Unicorn's `uc_hook_add` through ctypes. Its hook looks each executed block up in a C
table (one per address space) holding the block's instructions, cycles, category,
event counts and a `trap` flag, and adds them to counters in C memory. It calls back
into Python only for a block missing from the table (decoded once with capstone, by
the same `block_cost` as the reference) and for a block holding a privileged
instruction, where the secure monitor decides whether to stop.

Invariants:
  - Same counts, same attribution as the Python reference `Accounting` (tests/machine/
    test_native_accounting.py runs both on the same guests): the C hook follows
    `Accounting.on_block` step for step, and every table entry is made from a
    `BlockCost` the reference would have computed.
  - The Python cache of decoded blocks and the C table of an address space hold the
    same blocks: both are filled by `_slow` and cleared together.
  - An exception in the Python callback stops the CPU and is raised after `emu_start`
    returns (`check`), as the Unicorn binding does for its own hooks.
"""

from __future__ import annotations

import ctypes
import hashlib
import weakref
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

from underbridge.guestbuild import toolchain
from underbridge.machine.accounting import (
    _COSTED_OPCODES,
    NO_DEADLINE,
    Accounting,
    BlockCost,
    Tally,
)
from underbridge.machine.monitor import Monitor

SOURCE = Path(__file__).parent / "native" / "blockhook.c"
_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror")
_SCHEMA = b"underbridge-blockhook-v1"
UB_EVENTS = 8
UB_CATEGORIES = 256
#: Event names in the order of the C event counters.
EVENT_NAMES: tuple[str, ...] = (*dict.fromkeys(_COSTED_OPCODES.values()), "cr3_write")
_EVENT_INDEX = {name: index for index, name in enumerate(EVENT_NAMES)}
assert len(EVENT_NAMES) <= UB_EVENTS


class _Block(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint64),
        ("cycles", ctypes.c_uint64),
        ("size", ctypes.c_uint32),
        ("instructions", ctypes.c_uint32),
        ("category", ctypes.c_uint32),
        ("used", ctypes.c_uint16),
        ("trap", ctypes.c_uint16),
        ("has_events", ctypes.c_uint32),
        ("events", ctypes.c_uint32 * UB_EVENTS),
    ]


_SLOW = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32)


class _State(ctypes.Structure):
    _fields_ = [
        ("instructions", ctypes.c_uint64),
        ("block_cycles", ctypes.c_uint64),
        ("deadline", ctypes.c_uint64),
        ("deadline_reached", ctypes.c_uint64),
        ("counting", ctypes.c_uint64),
        ("events", ctypes.c_uint64 * UB_EVENTS),
        ("category_cycles", ctypes.c_int64 * UB_CATEGORIES),
        ("table", ctypes.c_void_p),
        ("slow", _SLOW),
        ("stop", ctypes.c_void_p),
    ]


def library_path() -> Path:
    """The compiled hook, built on first use and cached by the hash of its inputs."""
    gcc = toolchain._find_gcc()
    digest = hashlib.sha256(_SCHEMA)
    for part in (
        toolchain._gcc_version(gcc).encode(),
        " ".join(_FLAGS).encode(),
        SOURCE.read_bytes(),
    ):
        digest.update(len(part).to_bytes(8, "little") + part)
    final = toolchain.cache_root() / "native" / digest.hexdigest()[:32] / "blockhook.so"
    if not final.is_file():
        toolchain._build_into(
            final,
            lambda output: toolchain._run_gcc(
                [gcc, *_FLAGS, "-o", str(output), str(SOURCE)], SOURCE.name
            ),
        )
    return final


@cache
def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path()))
    lib.ub_table_new.restype = ctypes.c_void_p
    lib.ub_table_new.argtypes = []
    lib.ub_table_free.argtypes = [ctypes.c_void_p]
    lib.ub_table_clear.argtypes = [ctypes.c_void_p]
    lib.ub_table_put.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Block)]
    return lib


def available() -> bool:
    """Whether the hook can be built here (gcc present)."""
    try:
        library()
    except toolchain.ToolchainError:
        return False
    return True


def _free_tables(lib: ctypes.CDLL, tables: list[int]) -> None:
    for table in tables:
        lib.ub_table_free(table)


class _InC:
    """An attribute of NativeAccounting that lives in the C hook's state (`_State`), where
    the hook reads and updates it. `kind` converts what C holds (flags are ints there)."""

    def __init__(self, kind: Callable[[int], Any] = int) -> None:
        self._kind = kind

    def __set_name__(self, _owner: type, name: str) -> None:
        self._name = name

    def __get__(self, accounting: Any, _owner: type | None = None) -> Any:
        if accounting is None:
            return self
        return self._kind(getattr(accounting._state, self._name))

    def __set__(self, accounting: Any, value: int) -> None:
        setattr(accounting._state, self._name, int(value))


class NativeAccounting(Accounting):
    """`Accounting` with its counters and block tables in C; see the module docstring."""

    def __init__(
        self,
        read_code: Callable[[int, int], bytes],
        *,
        counting: bool = True,
        monitor: Monitor | None = None,
    ) -> None:
        self._lib = library()
        self._state = _State()
        self._category_array = self._state.category_cycles  # one ctypes view, made once
        self._tables: dict[int, int] = {}
        self._all_tables: list[int] = []
        self._error: BaseException | None = None
        self._uc: Uc | None = None
        self._slow_callback = _SLOW(self._slow)
        self._state.slow = self._slow_callback
        self._state.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        super().__init__(read_code, counting=counting, monitor=monitor)
        self._state.table = self._new_table()  # the blocks run before any select_space
        self._finalizer = weakref.finalize(self, _free_tables, self._lib, self._all_tables)

    def install(self, uc: Uc) -> None:
        """Register the C hook on `uc` (instead of `uc.hook_add(UC_HOOK_BLOCK, on_block)`)."""
        self._uc = uc
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_BLOCK,
            ctypes.cast(self._lib.ub_on_block, ctypes.c_void_p),
            ctypes.cast(ctypes.pointer(self._state), ctypes.c_void_p),
            1,
            0,
        )
        if status != 0:
            raise RuntimeError(f"uc_hook_add failed ({status})")

    def _new_table(self) -> int:
        table = self._lib.ub_table_new()
        if not table:
            raise MemoryError("native accounting: no memory for a block table")
        self._all_tables.append(table)
        return table

    # -- counters in C memory ------------------------------------------------------------

    counting = _InC(bool)
    instructions = _InC()
    block_cycles = _InC()
    deadline = _InC()
    deadline_reached = _InC(bool)

    @property
    def block_events(self) -> Counter[str]:
        events = self._state.events
        return Counter({name: events[i] for i, name in enumerate(EVENT_NAMES) if events[i]})

    @block_events.setter
    def block_events(self, value: Counter[str]) -> None:
        for i, name in enumerate(EVENT_NAMES):
            self._state.events[i] = value.get(name, 0)

    @property
    def category_cycles(self) -> ctypes.Array[ctypes.c_int64]:  # type: ignore[override]
        return self._category_array

    @category_cycles.setter
    def category_cycles(self, value: list[int]) -> None:
        ctypes.memset(
            ctypes.addressof(self._state.category_cycles),
            0,
            ctypes.sizeof(self._state.category_cycles),
        )
        for i, cycles in enumerate(value):
            self._state.category_cycles[i] = cycles

    def arm(self, budget: int) -> None:
        """`Accounting.arm` on the C state directly (it runs before every emu_start)."""
        state = self._state
        state.deadline = state.instructions + budget if budget else NO_DEADLINE
        state.deadline_reached = 0

    def reset(self) -> None:
        self.instructions = self.block_cycles = self.charged_cycles = 0
        self.block_events = Counter()
        self.charged.clear()
        self._paths.clear()
        self.category_cycles = []

    def _new_category(self, name: str) -> int:
        if len(self.categories) == UB_CATEGORIES:
            raise ValueError(f"more than {UB_CATEGORIES} accounting categories")
        self.categories.append(name)  # its counter in C memory is already there, at zero
        return len(self.categories) - 1

    def tally(self) -> Tally:
        self._fold()
        cycles = self.category_cycles[: len(self.categories)]
        by_category = Counter(dict(zip(self.categories, cycles, strict=True)))
        return Tally(self.instructions, self.cycles, self.block_events + self.charged, +by_category)

    # -- block tables ------------------------------------------------------------------

    def attribute(self, name: str, start: int, end: int) -> None:
        super().attribute(name, start, end)
        for table in self._all_tables:
            self._lib.ub_table_clear(table)

    def select_space(self, cr3: int) -> None:
        super().select_space(cr3)
        table = self._tables.get(cr3)
        if table is None:
            table = self._tables[cr3] = self._new_table()
        self._state.table = table

    def forget_space(self, cr3: int) -> None:
        super().forget_space(cr3)
        table = self._tables.get(cr3)
        if table is not None:
            self._lib.ub_table_clear(table)

    def _slow(self, address: int, size: int) -> int:
        """Called by the C hook: decode a new block; 1 if the monitor stopped the CPU."""
        try:
            cost = self._blocks.get(address)
            if cost is None or cost.size != size:
                cost = self._decode(address, size)
                self._blocks[address] = cost
                self._put(address, cost)
            return int(self._monitor_stops(self._uc, address, cost))
        except BaseException as error:
            if self._error is None:
                self._error = error
            assert self._uc is not None
            self._uc.emu_stop()
            return 1

    def _put(self, address: int, cost: BlockCost) -> None:
        block = _Block(
            address=address,
            cycles=cost.cycles,
            size=cost.size,
            instructions=cost.instructions,
            category=cost.category,
            trap=int(cost.trap is not None),
            has_events=int(bool(cost.events)),
        )
        for event in cost.events:
            block.events[_EVENT_INDEX[event]] += 1
        if self._lib.ub_table_put(self._state.table, ctypes.byref(block)) != 0:
            raise MemoryError("native accounting: no memory for a block table")

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
