"""A red-team row's stage: a fresh machine with echo and a legitimate client of it.

`build_stage` sets it up under the row's design and resolves the targets the attacks
aim at (module doc of underbridge.redteam); `victim_problem` checks afterwards that
echo still answers a legitimate application and that echo and the client are alive.
Under underbridge, echo and the client are in kernel space and the targets include
the client's gate. Any other design's stage is read from its declared traits: echo and
the client are placed where the design places servers (kernel space, its domains and
ring, if `servers_in_kernel`; else user space), and only targets that exist under it
are published (under skybridge, the client's trampoline and calling-key record).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from underbridge.bench.ipc import ECHO_BASE
from underbridge.bridge.gate import wrpkru_offsets
from underbridge.bridge.iocall import IoRoutines
from underbridge.elf.image import parse_elf
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.ipc.kernel_space import CURRENT_THREAD_PAGE, KERNEL_RETURN
from underbridge.kernel.ipc.sky_bindings import Bindings
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.boot import KERNEL_DATA, KERNEL_STUBS
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine
from underbridge.redteam.spec import (
    APP_BASE,
    LEGIT_BASE,
    MAX_EVENTS,
    PTE_P_RW_U,
    VICTIM_ROUNDS,
)

if TYPE_CHECKING:
    from underbridge.kernel.ipc import DomainPlacement
    from underbridge.kernel.ipc.gate_table import GateState
    from underbridge.kernel.ipc.underbridge import UnderbridgeIpc


class RedTeamError(RuntimeError):
    """The stage could not be set up (echo or the legitimate client did not come up)."""


def attack_source(program: str) -> Path:
    return guest_root() / "attacks" / f"{program}.c"


@dataclass(eq=False)
class Stage:
    kernel: Kernel
    echo: CapGroup
    client: CapGroup
    targets: dict[str, int]
    placed: bool = True  # servers (echo, a row's partner) are placed in kernel space
    ring: int = 0  # the ring placed servers run in
    gates: bool = True  # the design's connections have UnderBridge gates (gate targets)

    @property
    def machine(self) -> Machine:
        return self.kernel.machine


def domain_pkru(placement: DomainPlacement, group: CapGroup) -> int:
    """The PKRU of an in-kernel cap group's domain (the stage places every server there)."""
    domain = placement.domain_of(group)
    if domain is None:
        raise RedTeamError(f"{group.name} is not in kernel space")
    return domain.pkru


def run_until(kernel: Kernel, done: Callable[[], bool]) -> bool:
    """Run until `done()`, or until nothing is ready or MAX_EVENTS events have passed."""
    events = itertools.count()
    kernel.run(until=lambda: done() or next(events) >= MAX_EVENTS)
    return done()


def gate_targets(machine: Machine, gate: GateState, prefix: str = "gate") -> dict[str, int]:
    """A gate's entry, first wrpkru, the switch before it, its ud2, the instruction after
    its call of the handler (where the return half starts) and its control page."""
    code = machine.read_virtual(machine.kernel_space, gate.address, 4096)
    first = wrpkru_offsets(code)[0]
    insns = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, gate.address))
    before = [i for i in insns if i.address < gate.address + first]
    switch = next(
        i.address for i in reversed(before) if i.mnemonic == "mov" and i.op_str.startswith("eax,")
    )
    abort = next(i.address for i in insns if i.mnemonic == "ud2")
    call = next(i for i in insns if i.mnemonic == "call")
    return {
        prefix: gate.address,
        f"{prefix}_wrpkru": gate.address + first,
        f"{prefix}_switch": switch,
        f"{prefix}_abort": abort,
        f"{prefix}_return": call.address + call.size,
        f"{prefix}_control": gate.control,
    }


def symbols_of(elf: Path, names: tuple[str, ...], prefix: str) -> dict[str, int]:
    return {f"{prefix}_{name}": symbol(elf, name)[0] for name in names}


def _io_denied(machine: Machine, routines: IoRoutines) -> int:
    """The checked routines' ud2 (where a refused port access ends)."""
    code = machine.read_virtual(machine.kernel_space, routines.outb, 4096)
    insns = Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, routines.outb)
    return next(i.address for i in insns if i.mnemonic == "ud2")


def _echo_and_client(kernel: Kernel, *, placed: bool) -> tuple[Path, CapGroup, CapGroup]:
    """Spawn echo, then the legitimate client once echo waits; both placed if `placed`."""
    kernel.register_program("hello", build_program("hello", base=APP_BASE))
    echo_elf = build_program("echo", base=ECHO_BASE)
    echo = kernel.spawn(echo_elf, ["echo"], in_kernel=placed)
    if not run_until(
        kernel, lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    ):
        raise RedTeamError(f"echo did not come up: {bytes(echo.console)!r}")
    client = kernel.spawn(
        build_program(attack_source("legit_client"), base=LEGIT_BASE),
        ["legit_client"],
        in_kernel=placed,
    )

    def parked() -> bool:  # blocked for good after its call (a kernel-IPC call blocks too)
        return b"legit_client: call ok" in bytes(client.console) and (
            client.threads[0].state is ThreadState.BLOCKED
        )

    if not run_until(kernel, lambda: not client.running or parked()) or not client.running:
        raise RedTeamError(f"the legitimate client failed: {bytes(client.console)!r}")
    return echo_elf, echo, client


def _common_targets(machine: Machine, echo_elf: Path, echo: CapGroup) -> dict[str, int]:
    """The targets every design has: echo's stack and entry, kernel data, page tables."""
    root = machine.kernel_space.root
    echo_stack = echo.threads[0].context[Reg.RSP]
    return {
        "echo_stack": echo_stack,
        # a thread started with its stack top here first touches echo_thread_rsp
        "echo_thread_stack": echo_stack & ~0xF,
        "echo_thread_rsp": (echo_stack & ~0xF) - 8,
        "echo_entry": parse_elf(echo_elf.read_bytes(), name="echo").entry,
        "kernel_data": KERNEL_DATA,
        "pt_root": root,
        "pt_self_map": root | PTE_P_RW_U,
        "all_keys_open": 0,
    }


def build_stage(mode: str = "underbridge") -> Stage:
    """A fresh machine under `mode` with echo and a legitimate client connected to it."""
    if mode != "underbridge":
        return _design_stage(mode)
    machine = Machine()
    kernel = Kernel(machine, ipc="underbridge")
    echo_elf, echo, client = _echo_and_client(kernel, placed=True)
    ipc = cast("UnderbridgeIpc", kernel.ipc)
    gate = next(g for g in ipc.gates() if g.conn.client is client)
    targets = {
        **_common_targets(machine, echo_elf, echo),
        "echo_pkru": domain_pkru(ipc, echo),
        "boot_stub_wrpkru": KERNEL_STUBS + 5,  # its stub was `xor ecx, ecx; xor edx, edx;`
        "kernel_return": KERNEL_RETURN,
        "current_thread": CURRENT_THREAD_PAGE,
        "io_denied": _io_denied(machine, ipc.io_routines(kernel)),
        **gate_targets(machine, gate),
    }
    return Stage(kernel, echo, client, targets)


def _design_stage(mode: str) -> Stage:
    """The stage under another design, placed as its traits say (module doc)."""
    kernel = Kernel(Machine(), ipc=mode)
    placed = kernel.ipc.traits.servers_in_kernel
    echo_elf, echo, client = _echo_and_client(kernel, placed=placed)
    targets = _common_targets(kernel.machine, echo_elf, echo)
    if placed:
        targets["echo_pkru"] = domain_pkru(kernel.placement, echo)
    bindings = getattr(kernel.ipc, "bindings", None)
    if isinstance(bindings, Bindings):  # skybridge: the client's binding to echo
        binding = next(b for b in bindings if b.client is client)
        targets["trampoline"] = binding.address
        targets["calling_key_record"] = binding.client_record
    gates = hasattr(kernel.ipc, "gates")
    ring = kernel.placement.ring if placed else 3
    return Stage(kernel, echo, client, targets, placed=placed, ring=ring, gates=gates)


def victim_problem(stage: Stage) -> str:
    """'' if echo still answers a legitimate application correctly, else what is wrong."""
    kernel = stage.kernel
    pingpong = kernel.spawn(
        build_program("pingpong", base=APP_BASE), ["pingpong", str(VICTIM_ROUNDS), "echo"]
    )
    run_until(kernel, lambda: not pingpong.running)
    output = bytes(pingpong.console).decode(errors="replace").strip()
    problems = []
    if pingpong.running:
        problems.append("pingpong hung")
        kernel.kill(pingpong)
    elif (
        pingpong.state is not GroupState.EXITED
        or pingpong.exit_status != 0
        or f"pingpong: {VICTIM_ROUNDS} rounds ok" not in output
    ):
        how = (
            pingpong.fault.describe()
            if pingpong.fault is not None
            else f"status {pingpong.exit_status}"
        )
        problems.append(f"pingpong {pingpong.state.value} ({how}): {output}")
    if not stage.echo.running:
        problems.append("echo is gone")
    if not stage.client.running:
        problems.append("the legitimate client is gone")
    return "; ".join(problems)
