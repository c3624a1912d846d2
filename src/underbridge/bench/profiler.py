"""The simulated-cycle profiler: every counted cycle of a run, by guest call stack.

`Profiler(kernel).attach()` right after the Kernel is made (before any spawn), run,
then `finish()` gives a `Profile` (profile_report.py): cycles by call stack, folded.

How it sees the run (nothing here changes what the machine counts):
  - a second UC_HOOK_BLOCK hook, in Python, registered after the accounting hook, so it
    runs after it for the same block. It reads how far the accounting's block-cycle
    counter moved since its last call: that is exactly the cycles of the block the
    accounting just counted (0 when the accounting did not count it: a spent budget,
    a VM exit before the block), and charges them to the running call stack;
  - the accounting's `charge` and `charge_all` of this one machine are wrapped: each
    charged event goes to a pseudo-frame "[kernel] CATEGORY" (the accounting's category,
    e.g. "ipc") with the event as its leaf, under the guest frame that caused it: the
    stack of the context that last ran (the thread whose syscall the kernel is
    handling), or, inside a run, the running one;
  - `Machine.run` of this machine is wrapped, to know which CPU context runs (one call
    stack per context); `Kernel.spawn` of this kernel is wrapped, to learn each
    program's ELF (symbols, elf/symbols.py) and where it is mapped.
All four are instance attributes of the one machine, accounting and kernel profiled:
with the profiler off, or on another machine, not one instruction of the run differs.

Call stacks: tracked at block granularity from calls and returns, not read from frame
pointers (guests are built with -O2, which omits them, guestbuild/toolchain.py). A
block ending in `call` pushes the next block's function with the call's return
address; a block ending in `ret` pops back to the frame whose return address it lands
on; any other arrival in another named function (a tail call, a jump) replaces the top
frame. Limits: inlined functions count as their caller; a tail-called function appears
as called by its caller's caller; code without a symbol (the rewriter's trampolines
past the linked image) counts as the function that jumped to it; a `ret` to an address
no call pushed (hand-written assembly, a gate returning through a swapped stack) is
taken as a jump; stacks deeper than MAX_DEPTH stop growing. Code outside every
program is named by where it lies: "[gate]" (the gate window, bridge/gate.py),
"[io routines]", or "[code at PAGE]".
A kernel call through a gate for an application (an in-kernel server's handler run by
the kernel for an IPC_CALL, kernel/ipc/upcall.py) runs in a context of the kernel's
own: its stack continues the caller's, under "[kernel] ipc".

Invariants:
  - Exactness: every cycle the accounting counts after `attach` lands in exactly one
    node (a block's in the running stack's top frame, a charge's in its event leaf), so
    a profile's total equals the machine's simulated cycles over the same stretch
    (`finish` reports any difference as "[unattributed]", which tests require to be 0).
  - The profiler never writes guest state, machine state or accounting counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn import UC_HOOK_BLOCK

from underbridge.bench.profile_report import KERNEL, Node, Profile
from underbridge.elf.image import page_up, parse_elf
from underbridge.elf.symbols import FunctionSymbols, function_symbols
from underbridge.errors import UserError
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.machine.accounting import Charges
from underbridge.machine.costs import COSTS

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.machine.context import CpuContext
    from underbridge.machine.paging import PageTable

MAX_DEPTH = 512  # frames above a stack's base; deeper calls are not pushed
OTHER, CALL, RET = 0, 1, 2  # how a block ends
_DISASSEMBLER = Cs(CS_ARCH_X86, CS_MODE_64)
_WINDOWS = (  # code the kernel maps, by window (kernel/ipc/kernel_space.py)
    (ks.GATE_WINDOW, ks.CONTROL_WINDOW, "[gate]"),
    (ks.IO_ROUTINES_PAGE, ks.IO_ROUTINES_PAGE + 0x1000, "[io routines]"),
)


@dataclass(frozen=True, slots=True)
class _Block:
    """What the profiler needs of one decoded block."""

    program: str
    function: str
    named: bool  # False: no symbol here (e.g. a trampoline): it runs as its caller's code
    kind: int  # OTHER, CALL or RET: its last instruction


@dataclass(frozen=True, slots=True)
class _Code:
    """One program's code range in one address space."""

    start: int
    end: int
    program: str
    symbols: FunctionSymbols


@dataclass(slots=True)
class _Space:
    """One page table: the programs mapped in it, and its decoded blocks."""

    table: PageTable  # kept: the key is its id
    code: list[_Code] = field(default_factory=list)
    blocks: dict[tuple[int, int], _Block] = field(default_factory=dict)


@dataclass(slots=True)
class _Stack:
    """The shadow call stack of one CPU context."""

    context: CpuContext  # kept: the key is its id
    thread: bool  # a thread's context (else one the kernel runs for a thread)
    base: Node
    node: Node
    returns: list[int] = field(default_factory=list)  # per frame above base; -1: none
    prev_kind: int = OTHER
    prev_end: int = 0
    exit_rip: int = -1

    def restart(self, base: Node) -> None:
        self.base = self.node = base
        self.returns.clear()
        self.prev_kind = OTHER


def _block_kind(code: bytes, address: int) -> int:
    last = ""
    for _address, _size, mnemonic, _ops in _DISASSEMBLER.disasm_lite(code, address):
        last = mnemonic
    if last.startswith("call"):
        return CALL
    if last.startswith("ret"):
        return RET
    return OTHER


class Profiler:
    """Attributes a kernel's simulated cycles to guest call stacks; see the module doc."""

    def __init__(self, kernel: Kernel) -> None:
        machine = kernel.machine
        if machine.accounting is None:
            raise UserError(
                "profiling needs simulated-cycle accounting",
                hint="drop --no-accounting",
            )
        self.kernel = kernel
        self.machine = machine
        self._acct = machine.accounting
        self.top = Node(None, "", None)
        self._kernel_root = self.top.child(KERNEL, None)
        self._spaces: dict[int, _Space] = {}
        self._stacks: dict[int, _Stack] = {}
        self._stack: _Stack | None = None
        self._space: _Space | None = None
        self._space_table: object = None
        self._seen = 0
        self._start = 0
        self._hook: int | None = None
        self._wrapped: list[tuple[object, str]] = []

    # -- attaching -------------------------------------------------------------------

    def attach(self) -> Profiler:
        """Start profiling: from here on every counted cycle is attributed."""
        if self._hook is not None:
            raise RuntimeError("the profiler is already attached")
        acct, machine, kernel = self._acct, self.machine, self.kernel
        self._start = acct.cycles
        self._seen = acct.block_cycles
        self._wrap(machine, "run", self._run)
        self._wrap(kernel, "spawn", self._spawn)
        self._wrap(acct, "charge", self._charge)
        self._wrap(acct, "charge_all", self._charge_all)
        self._hook = machine.uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        return self

    def _wrap(self, owner: object, name: str, make: Callable[[Any], Any]) -> None:
        """Shadow `owner.name` (a bound method) with an instance attribute."""
        setattr(owner, name, make(getattr(owner, name)))
        self._wrapped.append((owner, name))

    def detach(self) -> None:
        """Stop profiling: the machine runs exactly as it did before `attach`."""
        if self._hook is None:
            return
        self.machine.uc.hook_del(self._hook)
        self._hook = None
        for owner, name in self._wrapped:
            delattr(owner, name)
        self._wrapped.clear()

    def finish(self, title: str = "") -> Profile:
        """Detach, and the profile of everything counted since `attach`."""
        self.detach()
        return Profile.of(self.top, self._acct.cycles - self._start, title)

    # -- programs and symbols --------------------------------------------------------

    def _spawn(self, spawn: Callable[..., CapGroup]) -> Callable[..., CapGroup]:
        def spawn_and_note(elf: Path | bytes | str, *args: Any, **kwargs: Any) -> CapGroup:
            group = spawn(elf, *args, **kwargs)
            if isinstance(elf, str):
                elf = self.kernel.programs[elf]
            self.add_program(group, elf.read_bytes() if isinstance(elf, Path) else elf)
            return group

        return spawn_and_note

    def add_program(self, group: CapGroup, data: bytes) -> None:
        """Name the code of `group`, loaded from the ELF file `data`."""
        image = parse_elf(data, name=group.name)
        start = image.segments[0].vaddr
        end = page_up(image.end)
        table = group.vmspace.table
        if table is self.machine.kernel_space:  # the rewriter may append trampolines
            end = max(end, start + ks.REGION_SIZE)
        space = self._space_of(table)
        space.code = [c for c in space.code if c.end <= start or end <= c.start]
        space.code.append(_Code(start, end, group.name, function_symbols(data, name=group.name)))
        space.blocks.clear()

    def _space_of(self, table: PageTable) -> _Space:
        space = self._spaces.get(id(table))
        if space is None:
            space = self._spaces[id(table)] = _Space(table)
        return space

    def _decode(self, space: _Space, address: int, size: int) -> _Block:
        program, function, named = self._name(space, address)
        code = self.machine._read_running_code(address, size)  # what the accounting reads
        block = _Block(program, function, named, _block_kind(code, address))
        space.blocks[address, size] = block
        return block

    def _name(self, space: _Space, address: int) -> tuple[str, str, bool]:
        for code in space.code:
            if code.start <= address < code.end:
                function = code.symbols.function_at(address)
                return code.program, function or "[no symbol]", function is not None
        for start, end, name in _WINDOWS:
            if start <= address < end:
                return KERNEL, name, True
        return KERNEL, f"[code at {address & ~0xFFF:#x}]", True

    # -- contexts --------------------------------------------------------------------

    def _run(self, run: Callable[..., Any]) -> Callable[..., Any]:
        def run_and_follow(context: CpuContext, *args: Any, **kwargs: Any) -> Any:
            stack = self._stack_of(context)
            outer, self._stack = self._stack, stack
            try:
                return run(context, *args, **kwargs)
            finally:
                stack.exit_rip = context.rip
                if not stack.thread:  # the kernel's own call is over: back to the thread
                    self._stack = outer

        return run_and_follow

    def _stack_of(self, context: CpuContext) -> _Stack:
        stack = self._stacks.get(id(context))
        if stack is None:
            stack = self._new_stack(context)
            self._stacks[id(context)] = stack
        if not stack.thread and context.rip != stack.exit_rip:  # a new call by the kernel
            stack.restart(self._category_node(self._charge_node()))
        return stack

    def _new_stack(self, context: CpuContext) -> _Stack:
        for group in self.kernel.groups.values():
            for thread in group.threads:
                if thread.context is context:
                    root = self.top.child(group.name, None)
                    return _Stack(context, True, root, root)
        return _Stack(context, False, self._kernel_root, self._kernel_root)

    def _charge_node(self) -> Node:
        stack = self._stack
        return self._kernel_root if stack is None else stack.node

    def _category_node(self, node: Node) -> Node:
        acct = self._acct  # the category the accounting puts the charge being made in:
        return node.child(KERNEL, f"[kernel] {acct.categories[acct._charge_category]}")

    # -- charges ---------------------------------------------------------------------

    def _charge(self, charge: Callable[..., None]) -> Callable[..., None]:
        def charge_and_note(event: str, times: int = 1) -> None:
            node = self._category_node(self._charge_node())
            node.child(KERNEL, event).cycles += COSTS[event].cycles * times
            charge(event, times)

        return charge_and_note

    def _charge_all(self, charge_all: Callable[[Charges], None]) -> Callable[[Charges], None]:
        def charge_all_and_note(charges: Charges) -> None:
            node = self._category_node(self._charge_node())
            rest = charges.cycles
            for event, times in charges.events:
                cycles = COSTS[event].cycles * times
                node.child(KERNEL, event).cycles += cycles
                rest -= cycles
            node.cycles += rest  # 0 for every Charges.of
            charge_all(charges)

        return charge_all_and_note

    # -- the block hook --------------------------------------------------------------

    def _on_block(self, _uc: object, address: int, size: int, _data: object) -> None:
        cycles = self._acct.block_cycles
        delta = cycles - self._seen
        if delta <= 0:
            return  # the accounting did not count this block (see the module doc)
        self._seen = cycles
        table = self.machine._space  # the running page table, as the accounting keys blocks
        if table is not self._space_table:
            self._space_table = table
            self._space = self._space_of(table)
        space = self._space
        assert space is not None
        block = space.blocks.get((address, size)) or self._decode(space, address, size)
        stack = self._stack
        if stack is None:
            self._kernel_root.cycles += delta  # code run outside any context (none today)
            return
        self._step(stack, block, address)
        stack.prev_kind, stack.prev_end = block.kind, address + size
        stack.node.cycles += delta

    def _step(self, stack: _Stack, block: _Block, address: int) -> None:
        """Move `stack` to the frame in which `block` (at `address`) runs."""
        kind = stack.prev_kind
        if kind == CALL and len(stack.returns) < MAX_DEPTH:
            stack.returns.append(stack.prev_end)
            stack.node = stack.node.child(block.program, block.function)
            return
        if kind == RET:
            returns = stack.returns
            for depth in range(len(returns) - 1, -1, -1):
                if returns[depth] == address:
                    node = stack.node
                    for _ in range(len(returns) - depth):
                        node = node.parent  # type: ignore[assignment]
                    stack.node = node
                    del returns[depth:]
                    break
        if not block.named:
            return
        node = stack.node
        if node is stack.base:
            stack.returns.append(-1)
            stack.node = node.child(block.program, block.function)
        elif node.function != block.function or node.program != block.program:
            stack.node = node.parent.child(block.program, block.function)  # type: ignore[union-attr]
