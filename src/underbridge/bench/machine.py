"""`underbridge bench machine`: what the emulated machine costs in wall time.

Four figures, each measured on a fresh machine with machine code assembled here:
  - guest instructions per second in a register-only loop, with accounting (and the
    secure monitor, which shares its block hook) on, and with both off;
  - a syscall round trip into Python and back (the CPU stops, Python sees the event,
    the thread is resumed), in microseconds;
  - a pair of wrpkru domain switches in ring 0 (wrpkru flushes the emulated TLB), in
    microseconds, with accounting off.
Then the floors of this emulator, measured in the same run, and each IPC path's wall
time per round trip as a ratio to its floor (so progress shows on any host):
  - the wrpkru floor: the same two-wrpkru loop run with no hook at all, not even the
    engine's instruction counting (the floor of a server-server call through a gate);
  - the syscall floor: a `syscall` loop whose only hook records the event and stops the
    CPU, restarted each time by a context restore (the floor of one kernel entry);
  - a path's floor is the syscall floor times its kernel entries (2 for seL4's Call +
    ReplyRecv, 1 for an UnderBridge app call), or the wrpkru floor for a path with none.
Wall times vary with the host; the simulated counts beside them do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from underbridge.guestbuild.asm import assemble
from underbridge.machine.context import CpuContext, Reg
from underbridge.machine.cpu import UNLIMITED_COUNT, ExitKind, Machine
from underbridge.machine.paging import PageFlags

CODE_VA = 0x40_0000
LOOP_INSTRUCTIONS = 4  # per iteration of LOOP below


@dataclass(frozen=True, slots=True)
class MachineBench:
    loop_iterations: int
    mips_accounting_on: float
    mips_accounting_off: float
    syscall_roundtrips: int
    syscall_roundtrip_wall_us: float
    wrpkru_pairs: int
    wrpkru_pair_wall_us: float
    loop_sim_cycles: int
    wrpkru_pair_floor_us: float
    syscall_floor_us: float
    ipc: tuple[PathVsFloor, ...] = ()

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PathVsFloor:
    mode: str
    path: str
    rounds: int
    wall_us_per_rtt: float  # accounting on
    kernel_entries: int
    floor_us: float
    ratio: float


#: Kernel entries per round trip: seL4's Call + ReplyRecv; UnderBridge's app call (the
#: server's reply returns through the gate); none between two in-kernel servers.
KERNEL_ENTRIES = {
    ("sel4", "app-server"): 2,
    ("sel4", "server-server"): 2,
    ("sel4-kpti", "app-server"): 2,
    ("sel4-kpti", "server-server"): 2,
    ("underbridge", "app-server"): 1,
    ("underbridge", "server-server"): 0,
}


def _context_for(machine: Machine, source: str, ring: int) -> CpuContext:
    table = machine.new_page_table()
    code = assemble(source, origin=CODE_VA)
    frame = machine.frames.alloc()
    machine.mem.write(frame, code)
    table.map(CODE_VA, frame, PageFlags(user=True, executable=True))
    machine.code_changed(table)
    return machine.new_context(ring=ring, page_table=table, rip=CODE_VA, rsp=0)


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def loop_mips(iterations: int, *, accounting: bool) -> tuple[float, int]:
    machine = Machine(accounting=accounting, monitor=accounting)  # off: no block hook at all
    context = _context_for(
        machine,
        f"mov rcx, {iterations}\nl: add rax, 1\nadd rbx, 2\ndec rcx\njnz l\nsyscall",
        ring=3,
    )
    seconds = _timed(lambda: machine.run(context))
    return iterations * LOOP_INSTRUCTIONS / seconds / 1e6, machine.tally().cycles


def syscall_roundtrip_us(rounds: int) -> float:
    machine = Machine()
    context = _context_for(machine, "l: syscall\njmp l", ring=3)
    machine.run(context)  # warm: translate the blocks once

    def spin() -> None:
        for _ in range(rounds):
            if machine.run(context).kind is not ExitKind.SYSCALL:
                raise RuntimeError("the syscall loop stopped unexpectedly")

    return _timed(spin) / rounds * 1e6


def wrpkru_pair_us(pairs: int) -> float:
    machine = Machine(accounting=False, monitor=False)
    context = _wrpkru_loop(machine, pairs)
    return _timed(lambda: machine.run(context)) / pairs * 1e6


def _wrpkru_loop(machine: Machine, pairs: int) -> CpuContext:
    return _context_for(
        machine,
        f"mov r8, {pairs}\nxor ecx, ecx\nxor edx, edx\n"
        "l: mov eax, 4\nwrpkru\nxor eax, eax\nwrpkru\ndec r8\njnz l\nsyscall",
        ring=0,
    )


def wrpkru_floor_us(pairs: int) -> float:
    """The two-wrpkru loop with no hook running: one emu_start on a machine of its own
    (the machine never counts again, see Machine._emu_start), checked to have finished."""
    machine = Machine(accounting=False, monitor=False)
    context = _wrpkru_loop(machine, pairs)
    machine._load(context)
    seconds = _timed(lambda: machine.uc.emu_start(context.rip, 0))
    machine._save(context)
    if context[Reg.R8] != 0 or machine._pending != (ExitKind.SYSCALL, 0):
        raise RuntimeError("the wrpkru floor loop did not run to its end")
    return seconds / pairs * 1e6


def syscall_floor_us(rounds: int) -> float:
    """A syscall whose hook only records it and stops the CPU; restart by context restore."""
    machine = Machine(accounting=False, monitor=False)
    context = _context_for(machine, "l: syscall\njmp l", ring=3)
    machine.run(context)  # warm: translate the blocks once
    uc, saved, rip = machine.uc, context.uc_context, context.rip

    def spin() -> None:
        for _ in range(rounds):
            uc.context_restore(saved)
            uc.emu_start(rip, 0, count=UNLIMITED_COUNT)  # as every run of this machine

    seconds = _timed(spin)
    if machine._pending != (ExitKind.SYSCALL, 0):
        raise RuntimeError("the syscall floor loop did not stop at its syscall")
    return seconds / rounds * 1e6


def ipc_against_floors(
    rounds: int, syscall_floor: float, wrpkru_floor: float
) -> tuple[PathVsFloor, ...]:
    from underbridge.bench import ipc

    rows = []
    for (mode, path), entries in KERNEL_ENTRIES.items():
        wall = ipc.run_path(mode, path, rounds).wall_us_per_rtt
        floor = syscall_floor * entries if entries else wrpkru_floor
        rows.append(PathVsFloor(mode, path, rounds, wall, entries, floor, wall / floor))
    return tuple(rows)


def run(scale: float = 1.0) -> MachineBench:
    """Run all four measurements; `scale` shrinks them for tests."""
    iterations = max(1000, int(2_000_000 * scale))
    rounds = max(100, int(20_000 * scale))
    pairs = max(100, int(100_000 * scale))
    mips_on, cycles = loop_mips(iterations, accounting=True)
    mips_off, _ = loop_mips(iterations, accounting=False)
    wrpkru_floor = wrpkru_floor_us(pairs)
    syscall_floor = syscall_floor_us(rounds)
    return MachineBench(
        loop_iterations=iterations,
        mips_accounting_on=mips_on,
        mips_accounting_off=mips_off,
        syscall_roundtrips=rounds,
        syscall_roundtrip_wall_us=syscall_roundtrip_us(rounds),
        wrpkru_pairs=pairs,
        wrpkru_pair_wall_us=wrpkru_pair_us(pairs),
        loop_sim_cycles=cycles,
        wrpkru_pair_floor_us=wrpkru_floor,
        syscall_floor_us=syscall_floor,
        ipc=ipc_against_floors(max(50, int(2000 * scale)), syscall_floor, wrpkru_floor),
    )
