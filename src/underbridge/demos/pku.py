"""Two ring-0 guests on one page table, fenced apart only by protection keys.

The UnderBridge premise in its smallest form: guest A's pages carry key 1, guest B's
key 2, both are U=1 pages in the same page table, both run in ring 0, and each runs
with a PKRU that opens only its own key. In each of two rounds one guest is the victim
(alive, spinning on its own memory) and the other the attacker: the attacker reads and
writes its own memory, then reads the victim's, and the emulated MMU raises #PF with
the protection-key reason. Finally a third guest runs in the same table to show the
machine is still healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from underbridge.guestbuild.toolchain import build_program, symbol
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.machine.cpu import Machine
from underbridge.machine.oracle import Violation
from underbridge.machine.physmem import PAGE_SIZE
from underbridge.machine.pkru import pkru_allowing


@dataclass(frozen=True, slots=True)
class GuestSpec:
    name: str
    base: int
    pkey: int
    value: int


GUESTS = (GuestSpec("A", 0x1000_0000, 1, 1111), GuestSpec("B", 0x2000_0000, 2, 2222))


@dataclass(frozen=True, slots=True)
class PkuDemoResult:
    attackers: tuple[CapGroup, ...]
    victims: tuple[CapGroup, ...]
    survivor: CapGroup

    @property
    def isolation_held(self) -> bool:
        blocked = all(
            a.state is GroupState.FAULTED
            and a.fault is not None
            and a.fault.reason is Violation.PKEY_ACCESS_DISABLED
            and a.fault.cpl == 0
            for a in self.attackers
        )
        own_access = all(b"read it back" in bytes(g.console) for g in self.attackers + self.victims)
        return blocked and own_access and self.survivor.exit_status == 0


def run_pku_demo(machine: Machine | None = None) -> PkuDemoResult:
    machine = machine or Machine()
    kernel = Kernel(machine)
    shared = machine.new_page_table()
    binaries = {g.name: build_program("pku_neighbor", base=g.base) for g in GUESTS}
    secrets = {name: symbol(elf, "secret")[0] for name, elf in binaries.items()}

    def spawn(spec: GuestSpec, role: str, target: str) -> CapGroup:
        argv = ["pku_neighbor", spec.name, role, str(spec.value), hex(secrets[target])]
        return kernel.spawn(
            binaries[spec.name],
            argv,
            name=f"guest {spec.name} ({role})",
            ring=0,
            table=shared,
            pkey=spec.pkey,
            pkru=pkru_allowing(read_write=[spec.pkey]),
            stack_top=spec.base - PAGE_SIZE,
        )

    attackers, victims = [], []
    for attacker_spec, victim_spec in (GUESTS, tuple(reversed(GUESTS))):
        victim = spawn(victim_spec, "hold", attacker_spec.name)
        attacker = spawn(attacker_spec, "attack", victim_spec.name)
        kernel.run(until=lambda a=attacker: not a.running)
        kernel.kill(victim)
        attackers.append(attacker)
        victims.append(victim)
    survivor = kernel.spawn(
        build_program("hello", base=0x3000_0000),
        name="survivor",
        ring=0,
        table=shared,
        pkey=3,
        pkru=pkru_allowing(read_write=[3]),
        stack_top=0x3000_0000 - PAGE_SIZE,
    )
    kernel.run()
    return PkuDemoResult(tuple(attackers), tuple(victims), survivor)
