"""The ELF mutator: mutated guest binaries handed to Kernel.spawn as bytes.

Each mutant starts from a real guest binary (fuzz_syscalls, hello, echo, linked for ring 3
or for a kernel region) and gets one to three mutations: bit flips, random byte
overwrites, header fields (e_entry, e_phoff, e_phnum, e_phentsize, e_type) and program
header fields (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz) set to boundary
values, truncation, appended garbage, huge sizes (a .bss larger than RAM), and
overlapping segments. It is spawned in ring 3 (native or Linux personality) or, under
underbridge, in kernel space.

Clean outcomes: Kernel.spawn raises UserError or ElfError (counted per type), or the
spawned group runs under a budget and exits, faults, blocks or spends the budget.
Anything else escaping spawn or run is a kernel exception. Mutants are spawned in
batches on one kernel (BATCH), so what one leaves behind (memory, keys, services) is
what the next meets; a group still alive after its budget is killed.

Invariants: mutants depend only on the seed (random.Random); the outcome of each
depends only on the mutant and what its batch spawned before it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from underbridge.errors import UserError
from underbridge.fuzz.report import FuzzReport
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.machine.cpu import Machine

BATCH = 20  # mutants per kernel
MAX_EVENTS = 300  # kernel events a spawned mutant may take
MAX_INSTRUCTIONS = 3_000_000
QUANTUM = 20_000
USER_BASE = 0x40_0000
KERNEL_BASES = {"fuzz_syscalls": 0x0300_0000, "hello": 0x0400_0000, "echo": 0x0100_0000}
SEED_SALT = 0xE1F0_E1F0  # the mutator's stream differs from the syscall fuzzer's

EHDR = {
    "e_type": (16, "<H"),
    "e_machine": (18, "<H"),
    "e_entry": (24, "<Q"),
    "e_phoff": (32, "<Q"),
    "e_phentsize": (54, "<H"),
    "e_phnum": (56, "<H"),
}
PHDR = {
    "p_type": (0, "<I"),
    "p_flags": (4, "<I"),
    "p_offset": (8, "<Q"),
    "p_vaddr": (16, "<Q"),
    "p_filesz": (32, "<Q"),
    "p_memsz": (40, "<Q"),
}
PHDR_SIZE = 56
PT_LOAD = 1
BOUNDARIES = (
    0,
    1,
    0xFFF,
    0x1000,
    0x1001,
    0x10000,
    1 << 24,
    (1 << 24) + 0x1000,
    100 << 20,
    256 << 20,
    (256 << 20) + 1,
    1 << 31,
    1 << 32,
    (1 << 47) - 0x1000,
    1 << 47,
    1 << 63,
    (1 << 64) - 1,
    0xFFFF_8000_0000_0000,
    0xFFFF_FFFF_8000_0000,
    0x6000_0000,
    0x5000_0000_0000,
    # where something else already lives: the user stack, echo's region and its
    # upper half, the control, save-area and I/O-routine windows, the kernel's
    # call stack
    0x7FFF_FFFE_E000,
    0x0100_0000,
    0x0180_0000,
    0x0300_0000,
    0x7000_0000,
    0x7800_0000,
    0x7F00_0000,
    0x6300_0000_0000,
)

Progress = Callable[[int], None]
Mutation = Callable[[bytearray, random.Random], bytearray]


@dataclass(frozen=True, slots=True)
class Seedling:
    """A real binary a mutant starts from, and whether it was linked for kernel space."""

    name: str
    data: bytes
    in_kernel: bool


def seedlings() -> list[Seedling]:
    found = []
    for name, kernel_base in KERNEL_BASES.items():
        found.append(Seedling(name, build_program(name, base=USER_BASE).read_bytes(), False))
        found.append(Seedling(name, build_program(name, base=kernel_base).read_bytes(), True))
    return found


# ---- mutations -------------------------------------------------------------------------


def _get(data: bytearray, offset: int, fmt: str) -> int:
    if offset + struct.calcsize(fmt) > len(data):
        return 0
    return int(struct.unpack_from(fmt, data, offset)[0])


def _put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if offset + size <= len(data):
        struct.pack_into(fmt, data, offset, value & ((1 << (8 * size)) - 1))


def _interesting(rng: random.Random, original: int, data: bytearray) -> int:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice(BOUNDARIES)
    if choice == 1:
        return original + rng.choice((-0x1000, -1, 1, 0x1000, 0x10_0000))
    if choice == 2:
        return len(data) + rng.randrange(-8, 9)
    if choice == 3:
        return rng.getrandbits(64)
    return original ^ (1 << rng.randrange(64))


def _phdr_at(data: bytearray, rng: random.Random) -> int:
    phoff, phnum = _get(data, 32, "<Q"), _get(data, 56, "<H")
    return phoff + PHDR_SIZE * rng.randrange(max(1, min(phnum, 16)))


def flip_bits(data: bytearray, rng: random.Random) -> bytearray:
    span = min(len(data), 0x200) if rng.random() < 0.7 else len(data)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(span)] ^= 1 << rng.randrange(8)
    return data


def overwrite_bytes(data: bytearray, rng: random.Random) -> bytearray:
    start = rng.randrange(len(data))
    for index in range(start, min(len(data), start + rng.randint(1, 16))):
        data[index] = rng.randrange(256)
    return data


def header_field(data: bytearray, rng: random.Random) -> bytearray:
    offset, fmt = EHDR[rng.choice(sorted(EHDR))]
    _put(data, offset, fmt, _interesting(rng, _get(data, offset, fmt), data))
    return data


def phdr_field(data: bytearray, rng: random.Random) -> bytearray:
    base = _phdr_at(data, rng)
    offset, fmt = PHDR[rng.choice(sorted(PHDR))]
    _put(data, base + offset, fmt, _interesting(rng, _get(data, base + offset, fmt), data))
    return data


def truncate(data: bytearray, rng: random.Random) -> bytearray:
    limit = 0x200 if rng.random() < 0.5 else len(data)
    return data[: rng.randrange(min(limit, len(data)))]


def append_garbage(data: bytearray, rng: random.Random) -> bytearray:
    return data + bytearray(rng.randbytes(rng.randint(1, 8192)))


def huge_size(data: bytearray, rng: random.Random) -> bytearray:
    base = _phdr_at(data, rng)
    size = rng.choice((100 << 20, 200 << 20, (256 << 20) - 0x1000, 70 << 20, 1 << 40))
    _put(data, base + 40, "<Q", size)  # p_memsz
    if rng.random() < 0.3:
        _put(data, base + 32, "<Q", size)  # p_filesz too
    return data


def overlap(data: bytearray, rng: random.Random) -> bytearray:
    """Move one PT_LOAD onto another's pages (keeping vaddr and offset congruent)."""
    first, second = _phdr_at(data, rng), _phdr_at(data, rng)
    vaddr = _get(data, first + 16, "<Q") + rng.choice((0, 0x1000, 0x800, -0x1000))
    _put(data, second + 16, "<Q", (vaddr & ~0xFFF) | (_get(data, second + 8, "<Q") & 0xFFF))
    return data


def flags_and_types(data: bytearray, rng: random.Random) -> bytearray:
    base = _phdr_at(data, rng)
    if rng.random() < 0.5:
        _put(data, base + 4, "<I", rng.randrange(8))  # p_flags, W+X among them
    else:
        _put(data, base, "<I", rng.choice((0, 1, 2, 3, 4, 6, 0x6474E551, rng.getrandbits(32))))
    return data


MUTATIONS: tuple[Mutation, ...] = (
    flip_bits,
    overwrite_bytes,
    header_field,
    phdr_field,
    phdr_field,
    truncate,
    append_garbage,
    huge_size,
    overlap,
    flags_and_types,
)


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    mutant = bytearray(data)
    applied = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(MUTATIONS)
        if mutant:
            mutant = mutation(mutant, rng)
            applied.append(mutation.__name__)
    return bytes(mutant), applied


# ---- spawning mutants --------------------------------------------------------------------


def _spawn_and_run(kernel: Kernel, mutant: bytes, *, in_kernel: bool, abi: str) -> str:
    try:
        group = kernel.spawn(mutant, ["mutant"], name="mutant", in_kernel=in_kernel, abi=abi)
    except UserError as error:  # ElfError is a UserError
        return type(error).__name__
    events = 0

    def spent() -> bool:
        nonlocal events
        events += 1
        return events >= MAX_EVENTS or kernel.machine.tally().instructions >= budget_end

    budget_end = kernel.machine.tally().instructions + MAX_INSTRUCTIONS
    kernel.run(until=lambda: spent() or not group.running)
    return _ending(kernel, group, spent_budget=events >= MAX_EVENTS)


def _ending(kernel: Kernel, group: CapGroup, *, spent_budget: bool) -> str:
    if group.state is GroupState.FAULTED:
        return "spawned-faulted"
    if group.state is GroupState.EXITED:
        return "spawned-exited"
    kernel.kill(group)
    return "spawned-hung" if spent_budget else "spawned-blocked"


def one_batch(
    report: FuzzReport,
    rng: random.Random,
    design: str,
    count: int,
    stock: list[Seedling],
    progress: Progress | None,
) -> None:
    kernel = Kernel(Machine(), ipc=design, quantum=QUANTUM)
    for _ in range(count):
        seedling = rng.choice([s for s in stock if design == "underbridge" or not s.in_kernel])
        mutant, applied = mutate(seedling.data, rng)
        in_kernel = seedling.in_kernel and rng.random() < 0.8
        abi = "linux" if not in_kernel and rng.random() < 0.25 else "native"
        report.elf_mutants += 1
        try:
            outcome = _spawn_and_run(kernel, mutant, in_kernel=in_kernel, abi=abi)
        except Exception as error:
            where = "kernel" if in_kernel else f"ring3-{abi}"
            report.kernel_exception(
                error,
                f"elf {design}/{where} {seedling.name} "
                f"{'+'.join(applied)} (mutant {report.elf_mutants})",
            )
            outcome = "kernel-exception"
            kernel = Kernel(Machine(), ipc=design, quantum=QUANTUM)  # its state is suspect
        report.elf_outcomes[outcome] += 1
        if progress is not None:
            progress(1)


def run(
    report: FuzzReport,
    count: int,
    progress: Progress | None = None,
    stock: list[Seedling] | None = None,
) -> None:
    """Spawn `count` mutants, BATCH per kernel, the designs in turn."""
    stock = stock or seedlings()
    rng = random.Random(report.seed ^ SEED_SALT)
    done = 0
    batch = 0
    while done < count:
        size = min(BATCH, count - done)
        one_batch(report, rng, DESIGNS[batch % len(DESIGNS)], size, stock, progress)
        done += size
        batch += 1
