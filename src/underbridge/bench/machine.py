"""`underbridge bench machine`: what the emulated machine costs in wall time.

Four figures, each measured on a fresh machine with machine code assembled here:
  - guest instructions per second in a register-only loop, with accounting (and the
    secure monitor, which shares its block hook) on, and with both off;
  - a syscall round trip into Python and back (the CPU stops, Python sees the event,
    the thread is resumed), in microseconds;
  - a pair of wrpkru domain switches in ring 0 (wrpkru flushes the emulated TLB), in
    microseconds, with accounting off.
Wall times vary with the host; the simulated counts beside them do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from underbridge.asm import assemble
from underbridge.machine.context import CpuContext
from underbridge.machine.cpu import ExitKind, Machine
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

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


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
    context = _context_for(machine, f"mov rcx, {iterations}\n"
                           "l: add rax, 1\nadd rbx, 2\ndec rcx\njnz l\nsyscall", ring=3)
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
    context = _context_for(machine, f"mov r8, {pairs}\nxor ecx, ecx\nxor edx, edx\n"
                           "l: mov eax, 4\nwrpkru\nxor eax, eax\nwrpkru\ndec r8\njnz l\nsyscall",
                           ring=0)
    return _timed(lambda: machine.run(context)) / pairs * 1e6


def run(scale: float = 1.0) -> MachineBench:
    """Run all four measurements; `scale` shrinks them for tests."""
    iterations = max(1000, int(2_000_000 * scale))
    rounds = max(100, int(20_000 * scale))
    pairs = max(100, int(100_000 * scale))
    mips_on, cycles = loop_mips(iterations, accounting=True)
    mips_off, _ = loop_mips(iterations, accounting=False)
    return MachineBench(
        loop_iterations=iterations,
        mips_accounting_on=mips_on,
        mips_accounting_off=mips_off,
        syscall_roundtrips=rounds,
        syscall_roundtrip_wall_us=syscall_roundtrip_us(rounds),
        wrpkru_pairs=pairs,
        wrpkru_pair_wall_us=wrpkru_pair_us(pairs),
        loop_sim_cycles=cycles,
    )
