"""`underbridge bench deprivilege`: a trapped privileged instruction against a rewritten one.

The workload is a driver in kernel space (guest/servers/iodriver) writing ROUNDS bytes
to an I/O port it holds. Two ways:
  trapped    it executes `out dx, al`; the secure monitor traps each as a VM exit and
             the kernel emulates it (machine/monitor.py, kernel/handlers/portio.py);
  rewritten  the loader's rewriter (bridge/rewrite/) has turned each `out` into a call
             of the kernel's checked routine (bridge/iocall.py), which enters the
             kernel by syscall.
Both are measured like `bench ipc`: the simulated cycles (and wall time) of the loop
between the driver's markers, per write, minus one marker's cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from underbridge.bench.markers import MarkRecorder
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

DRIVER_BASE = 0x0300_0000
PORT = 0x80
HOW = {
    "trapped": "out dx, al: trapped by the monitor (VM exit), emulated by the kernel",
    "rewritten": "out dx, al rewritten by the loader into a call of the checked routine",
}


class BenchFailed(RuntimeError):
    """The driver did not finish cleanly."""


@dataclass(frozen=True, slots=True)
class WayResult:
    way: str
    sim_cycles_per_op: float
    wall_us_per_op: float
    events_per_op: dict[str, float]
    how: str


@dataclass(frozen=True, slots=True)
class DeprivilegeResult:
    rounds: int
    results: tuple[WayResult, ...]

    def to_json(self) -> dict[str, object]:
        return {"rounds": self.rounds, "results": [asdict(r) for r in self.results]}


def _measure(way: str, rounds: int) -> WayResult:
    machine = Machine()
    kernel = Kernel(machine, ipc="underbridge")
    argv = ["iodriver", str(rounds), hex(PORT)]
    driver = kernel.spawn(
        build_program("iodriver", base=DRIVER_BASE),
        argv,
        in_kernel=True,
        io_ports=range(PORT, PORT + 1),
        rewrite=way == "rewritten",
    )
    recorder = MarkRecorder(kernel).watch(driver)
    kernel.run(until=lambda: not driver.running)
    if driver.state is not GroupState.EXITED or driver.exit_status != 0 or not recorder.complete:
        raise BenchFailed(f"iodriver ({way}) ended {driver.state.value}: {driver.fault}")
    if len(driver.port_writes) != rounds:
        raise BenchFailed(f"iodriver ({way}) wrote {len(driver.port_writes)} of {rounds}")
    cycles, wall, events = recorder.per_round(rounds)
    return WayResult(way, cycles, wall * 1e6, events, HOW[way])


def run(rounds: int) -> DeprivilegeResult:
    if rounds < 1:
        raise ValueError("at least one round is needed")
    return DeprivilegeResult(
        rounds, tuple(_measure(way, rounds) for way in ("trapped", "rewritten"))
    )
