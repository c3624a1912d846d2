"""Red-team rows for live migration (kernel/migration.py, kernel/ipc/migrate.py): the
attacks of issue 14, each on the underbridge stage with a migration the red team has
the kernel make at a chosen moment (`arm`, named by the row's `migrate`).

  mig-stale-gate     an in-kernel client keeps calling echo's gate address, and reads
                     echo's stack, after echo moved out (at the attacker's marker);
  mig-old-addresses  a server moved out (as soon as it waits for calls) tries the
                     kernel-space addresses it had, from its handler;
  mig-race           an application calls a slow server from two threads while the
                     server is moved as it replies (a call queued behind the reply).
Each is an attack that succeeds on a naive kernel: one that leaves a moved-out server's
gates and pages on the kernel page table, that moves a server out by dropping it to ring
3 on the page table it ran on, or that moves a server without waiting for it to be
quiescent (tests/test_redteam_migration.py runs each row against such a kernel too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Sys
from underbridge.machine.oracle import Access, Violation
from underbridge.redteam.spec import AttackSpec, Expect, Partner

if TYPE_CHECKING:
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.thread import Thread
    from underbridge.redteam.stage import Stage

EPIPE = "-32"
MIGRATION_ROWS: tuple[AttackSpec, ...] = (
    AttackSpec(
        "mig-stale-gate",
        "an in-kernel client calls echo's gate address again after echo moved out, "
        "then reads echo's stack at its old address",
        "mig_stale_gate",
        ("{echo_stack}",),
        Expect(
            "the call goes through the kernel's forwarder to echo in user space (call = 0, "
            "mr1 = 8); #PF not present on the read (nothing of echo is left on the kernel "
            "page table), ring 0, attacker ends",
            "#PF",
            Violation.NOT_PRESENT,
            Access.READ,
            address="echo_stack",
            reports=("first call = 0 mr1 = 7", "call = 0 mr1 = 8"),
        ),
        migrate="echo-out-at-marker",
    ),
    AttackSpec(
        "mig-old-addresses",
        "a server moved out of kernel space reads echo's stack and the current-thread word "
        "at the addresses it had in kernel space, from its handler",
        "mig_prober",
        ("{echo_stack}", "{current_thread}"),
        Expect(
            "#PF not present reading echo's stack, in ring 3 (its own page table maps "
            "nothing but its own pages); the attacker ends, its caller gets -EPIPE (-32)",
            "#PF",
            Violation.NOT_PRESENT,
            Access.READ,
            address="echo_stack",
            ring=3,
        ),
        partner=Partner("mig_caller", lines=(f"call = {EPIPE}",)),
        migrate="attacker-out-when-serving",
    ),
    AttackSpec(
        "mig-race",
        "an application calls a slow server from two threads while the kernel is asked to "
        "move the server as it replies, another call often queued behind",
        "mig_race",
        (),
        Expect(
            "every migration waits for the server to be quiescent; each of the 20 calls gets "
            "exactly its own reply (calls = 20 ok)",
            reports=("calls = 20 ok",),
        ),
        in_kernel=False,
        partner=Partner("mig_slow", before=True),
        migrate="race-partner",
    ),
)


def arm(stage: Stage, spec: AttackSpec, attacker: CapGroup, partner: CapGroup | None) -> None:
    """Install the row's migration trigger on the stage's kernel."""
    _TRIGGERS[spec.migrate or ""](stage, attacker, partner)


def _echo_out_at_marker(stage: Stage, attacker: CapGroup, _partner: CapGroup | None) -> None:
    kernel = stage.kernel

    def observe(thread: Thread, number: int, args: tuple[int, ...]) -> None:
        if thread.group is attacker and number == Sys.WRITE and args[1] == 0:
            kernel.migrate(stage.echo, to_kernel=False, reason="red team: at the marker")

    kernel.syscall_observers.append(observe)


def _attacker_out_when_serving(stage: Stage, attacker: CapGroup, _partner: CapGroup | None) -> None:
    kernel = stage.kernel

    def observe(thread: Thread, number: int, _args: tuple[int, ...]) -> None:
        if thread.group is attacker and number == Sys.IPC_REPLY_WAIT and not kernel.migrations:
            kernel.migrate(attacker, to_kernel=False, reason="red team: once it serves")

    kernel.syscall_observers.append(observe)


def _race_partner(stage: Stage, attacker: CapGroup, partner: CapGroup | None) -> None:
    """The server is moved out at the entry of the attacker's calls, and back in as it is
    about to reply: a call of the attacker's other thread is then often queued behind
    the reply it owes."""
    kernel = stage.kernel
    assert partner is not None
    armed = [False]

    def observe(thread: Thread, number: int, _args: tuple[int, ...]) -> None:
        if any(m.state == "pending" for m in kernel.migrations):
            return
        inside = kernel.placement.domain_of(partner) is not None
        if thread.group is attacker and number == Sys.IPC_CALL:
            armed[0] = True
            if inside:  # out at the call's entry, to serve it in user space
                kernel.migrate(partner, to_kernel=False, reason="red team: at a call's entry")
        elif thread.group is partner and number == Sys.IPC_REPLY_WAIT and armed[0]:
            armed[0] = False
            why = "red team: as it replies, a call in progress"
            kernel.migrate(partner, to_kernel=True, reason=why)

    kernel.syscall_observers.append(observe)


_TRIGGERS: dict[str, Callable[[Stage, CapGroup, CapGroup | None], None]] = {
    "echo-out-at-marker": _echo_out_at_marker,
    "attacker-out-when-serving": _attacker_out_when_serving,
    "race-partner": _race_partner,
}
