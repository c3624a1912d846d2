"""Recovery cost per design: simulated cycles (and wall time) from a server's death to
its client's next successful call. README, "Fault isolation".

    .venv/bin/python tools/recovery_cycles.py [--backoff CYCLES]

For each design and path (app-server, server-server): echo runs under the supervisor,
tests/guests/retry_client.c calls it through ub_ipc_call_retry, and echo is killed
30,000 cycles into the calls. Printed: cycles from the death to echo's new start
(the backoff, then the spawn), to its service being registered again, and to the
client's first successful call after it (its reconnect and the resent call), and the
wall time of that whole stretch. Deterministic in cycles; wall time is this machine's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.ipc.registry import DESIGNS
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.supervisor import Policy, Supervisor
from underbridge.machine.cpu import Machine

CLIENT = Path(__file__).resolve().parent.parent / "tests" / "guests" / "retry_client.c"


def measure(mode: str, path: str, backoff: int) -> tuple[int, int, int, float] | None:
    kernel = Kernel(Machine(), ipc=mode)
    supervisor = Supervisor(kernel)
    in_kernel = kernel.ipc.traits.servers_in_kernel
    supervisor.start(
        build_program("echo", base=0x0100_0000),
        ["echo"],
        service="echo",
        in_kernel=in_kernel,
        policy=Policy(backoff=backoff),
    )
    kernel.run(until=lambda: "echo" in kernel.services)
    as_server = path == "server-server"
    args = ["retry_client", "1000", "echo"] + (["--as-server"] if as_server else [])
    client = kernel.spawn(
        build_program(CLIENT, base=0x0200_0000), args, in_kernel=in_kernel and as_server
    )
    supervisor.kill_at("echo", kernel.machine.clock() + 30_000)
    kernel.run(until=lambda: bool(supervisor.restarts))  # returns right after the death
    wall = time.perf_counter()
    kernel.run(until=lambda: bool(client.console) or not client.running)
    wall = time.perf_counter() - wall
    lines = bytes(client.console).decode().split()
    if not lines or lines[3] != "0":
        return None  # monolithic server-server: the client died with the server
    [restart] = supervisor.restarts
    assert restart.started_at is not None and restart.serving_at is not None
    died = restart.died_at
    return restart.started_at - died, restart.serving_at - died, int(lines[6]) - died, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backoff", type=int, default=1, help="the restart policy's backoff")
    backoff = parser.parse_args().backoff
    print(f"backoff {backoff:,} cycles; cycles from the death of echo to:")
    print(f"{'design':12} {'path':14} {'restart':>8} {'serving':>8} {'next call':>10} {'wall ms':>8}")
    for mode in DESIGNS:
        for path in ("app-server", "server-server"):
            row = measure(mode, path, backoff)
            if row is None:
                print(f"{mode:12} {path:14} {'(the client ended with the server)':>37}")
                continue
            started, serving, recovered, wall = row
            print(
                f"{mode:12} {path:14} {started:>8,} {serving:>8,} {recovered:>10,} "
                f"{wall * 1e3:>8.1f}"
            )


if __name__ == "__main__":
    main()
