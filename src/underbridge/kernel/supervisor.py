"""The supervisor: restarts crashed servers, like MINIX 3's reincarnation server.

A server started under supervision (`Supervisor.start`) has a restart policy. When it
ends in any way but a clean exit (a fault, a kill, a spent budget, a nonzero exit
status), the supervisor starts the same binary again, with the same arguments, in the
same placement (in kernel space in its own execution domain, or in user space), after
a backoff in simulated cycles that doubles with each restart, up to a limit. The new
server registers its services itself, as it did the first time (MINIX's servers
publish themselves the same way); clients see -EPIPE on their old connections and
reconnect by name (guest/runtime/ipc.c, ub_ipc_reconnect).

Why kernel-side (Python, like the kernel) and not a guest server as in MINIX 3: it must
see every group's end as the kernel handles it (a fault inside a gate call included),
spawn a server in kernel space (admission is the kernel's), and keep a server's disk
memory across its death; a guest supervisor would need three new privileged syscalls
for that, and would itself be a thing to restart. Its work happens between kernel
events (`after_event`, `idle`), never inside one, so it never sees a half-handled
syscall, and it charges nothing: restarts and kills cost the simulated clock only the
work the restarted server does.

Fault injection (for tests and `bench crash`): `kill_at` ends a server at a simulated
instant (the run loop cuts its run budget so the CPU stops there, inside a request or
a gate call if that is where it is), `kill_when` at the first kernel event where a
predicate holds (call it from any hook: the kill waits for the event to finish), and
`kill_now` at once, from Python between runs. `kill_at` lands inside the kernel's
own gate calls for applications too (upcall.py asks between its slices); `kill_when`
is checked between kernel events only.

Memory that survives a restart: `keep` names a range of the server's image (the
ramdisk's disk array). As the server ends, before its address space is torn down, the
supervisor takes those pages' frames out of it; the restarted server gets those
frames mapped where its image put fresh ones, so it finds its disk as it was, as a
disk outlives its driver. Invariants:
  - A kept frame belongs to exactly one of: the old address space, the supervisor (while
    the server is down), the new address space; it is freed once, when the supervisor
    gives up on the server or it is stopped.
  - `restarts` records every restart in order, with the instants (simulated cycles) of
    the death, the new start and its service being registered again.
  - Determinism: every decision depends on the simulated clock and kernel events only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from underbridge.errors import UserError
from underbridge.kernel.ipc import sky_bindings as sky
from underbridge.kernel.objects.capgroup import CapGroup, Ending, GroupState
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.kernel import Kernel
    from underbridge.machine.physmem import PhysAddr

DEFAULT_BACKOFF = 20_000  # simulated cycles before the first restart (doubles each time)
DEFAULT_LIMIT = 100
_STEP = 8  # instructions per run while a due kill waits for a thread to leave a gate


@dataclass(frozen=True, slots=True)
class Policy:
    """When and how often to restart a server."""

    limit: int = DEFAULT_LIMIT  # restarts at most (then it stays down)
    backoff: int = DEFAULT_BACKOFF  # cycles before restart n is backoff * 2**(n-1), capped
    max_backoff: int = 1 << 24

    def delay(self, attempt: int) -> int:
        return min(self.backoff << min(attempt - 1, 40), self.max_backoff)


@dataclass(slots=True)
class Restart:
    """One restart (or the refusal to restart), as the supervisor reports it."""

    name: str
    attempt: int  # 1 for the first restart
    old_pid: int
    ending: str  # how the old one ended, e.g. "exited -9" or "faulted: #PF ..."
    died_at: int  # simulated cycles (machine.clock) when it ended
    due_at: int  # when the backoff lets it start again
    new_pid: int | None = None  # None: not (yet) restarted
    started_at: int | None = None
    serving_at: int | None = None  # its service was registered again
    gave_up: str = ""  # why it stays down, if it does


@dataclass(eq=False)
class Supervised:
    name: str
    elf: bytes
    argv: list[str]
    service: str
    in_kernel: bool
    policy: Policy
    spawn_options: dict[str, object]
    keep: tuple[int, int] | None  # (vaddr, size) of memory that survives a restart
    group: CapGroup
    kept: list[PhysAddr] = field(default_factory=list)  # frames held while it is down
    attempts: int = 0
    stopping: bool = False


class Supervisor:
    """Starts servers, watches them end, restarts them (see the module docstring)."""

    def __init__(self, kernel: Kernel) -> None:
        if kernel.supervisor is not None:
            raise UserError("this kernel already has a supervisor")
        self.kernel = kernel
        self.servers: dict[str, Supervised] = {}
        self.restarts: list[Restart] = []
        self._due: list[tuple[Supervised, Restart]] = []  # waiting for their backoff
        self._kills: list[tuple[int, str]] = []  # (instant, server name)
        self._kill_hooks: list[tuple[Callable[[], bool], str]] = []
        # Restarted instances not yet serving: (server, its record, the instance).
        self._waiting_service: list[tuple[Supervised, Restart, CapGroup]] = []
        kernel.supervisor = self

    # -- starting and stopping ---------------------------------------------------------

    def start(
        self,
        elf: Path | bytes,
        argv: list[str],
        *,
        service: str,
        in_kernel: bool = False,
        policy: Policy | None = None,
        keep: tuple[int, int] | None = None,
        **spawn_options: object,
    ) -> CapGroup:
        """Spawn a server under supervision; `argv[0]` is its name here. `service` is
        the name it registers (the supervisor reports when it serves again). keep:
        (vaddr, size) of its image that survives a restart. Other options go to
        Kernel.spawn (io_ports, rewrite, ...)."""
        name = argv[0]
        if name in self.servers:
            raise UserError(f"a server named {name!r} is already supervised")
        data = elf.read_bytes() if isinstance(elf, Path) else elf
        if keep is not None and (keep[0] % PAGE_SIZE or keep[1] <= 0):
            raise UserError(f"kept memory must start on a page: {keep[0]:#x}+{keep[1]:#x}")
        group = self._spawn(data, argv, in_kernel, spawn_options)
        self.servers[name] = Supervised(
            name,
            data,
            list(argv),
            service,
            in_kernel,
            policy or Policy(),
            spawn_options,
            keep,
            group,
        )
        return group

    def holder(self, service: str) -> CapGroup | None:
        """The group a supervised server's service name is held for (the running one,
        or the one being restarted), or None: nobody else may register it, so no
        program can take the name while its server is down and receive the calls of
        clients that reconnect by name."""
        for server in self.servers.values():
            down_for_good = server.stopping or server.attempts > server.policy.limit
            if server.service == service and not down_for_good:
                return server.group
        return None

    def group(self, name: str) -> CapGroup:
        """The cap group currently running (or last run) as server `name`."""
        return self._server(name).group

    def stop(self, name: str) -> None:
        """End a server for good: no restart; kept memory is freed."""
        server = self._server(name)
        server.stopping = True
        self._due = [(s, r) for s, r in self._due if s is not server]
        self.kernel.kill(server.group)
        self._free_kept(server)

    # -- fault injection ---------------------------------------------------------------

    def kill_now(self, name: str) -> None:
        """End the server at once (from Python, between runs), or, if a thread is in
        gate or trampoline code just now, at the next kernel event after it leaves."""
        server = self._server(name)
        if self._safe():
            self.kernel.kill(server.group)
        else:
            self.kill_at(name, 0)

    def kill_at(self, name: str, instant: int) -> None:
        """End the server once the simulated clock reaches `instant` (0: at the next
        kernel event). Safe to call from any hook."""
        self._server(name)
        self._kills.append((instant, name))
        self._kills.sort(key=lambda kill: kill[0])

    def kill_when(self, name: str, predicate: Callable[[], bool]) -> None:
        """End the server at the first kernel event after which `predicate()` holds."""
        self._server(name)
        self._kill_hooks.append((predicate, name))

    # -- the kernel's calls (kernel.py) ------------------------------------------------

    def budget(self, quantum: int, rip: int) -> int:
        """The run budget (instructions) that stops the CPU in time for the next kill or
        restart: each instruction costs at least one cycle, so `due - now` instructions
        reach the instant. A kill that is due but waits for the code about to run (at
        rip) to leave gate or trampoline code steps it a few instructions at a time."""
        deadline = self._next_deadline()
        if deadline is None:
            return quantum
        left = deadline - self.kernel.machine.clock()
        if left > 0:
            return min(quantum, left)
        return _STEP if self._in_call_code(rip) else quantum

    def in_kernel_call(self, rip: int) -> None:
        """Between slices of the kernel's own gate call for an application (upcall.py),
        whose code is at rip: due kills only (a restart waits for the call to end). A
        kill of a server on the call's path unwinds the call, which returns -EPIPE."""
        now = self.kernel.machine.clock()
        if not self._kills or self._kills[0][0] > now or self._in_call_code(rip):
            return
        self._fire_due_kills(now)

    def after_event(self) -> None:
        """Between kernel events: due kills, then due restarts, then who serves again.

        A kill waits while any thread is inside gate or trampoline code (the kernel's
        call code, which runs "with interrupts off": tearing a connection down under it
        would leave it half way through a page that is gone); a thread inside a
        server's handler is fine, its call is unwound and returns -EPIPE."""
        now = self.kernel.machine.clock()
        if self._kill_hooks:
            for hook in [hook for hook in self._kill_hooks if hook[0]()]:
                self._kill_hooks.remove(hook)
                self._kills.insert(0, (0, hook[1]))
        self._fire_due_kills(now)
        while self._due and self._due[0][1].due_at <= now:
            self._restart(*self._due.pop(0))
        if self._waiting_service:
            self._note_serving(now)

    def _fire_due_kills(self, now: int) -> None:
        """The kills due by `now`, while no thread is inside gate or trampoline code."""
        while self._kills and self._kills[0][0] <= now and self._safe():
            _, name = self._kills.pop(0)
            self.kernel.kill(self.servers[name].group)

    def idle(self) -> bool:
        """No thread is ready: start the next pending restart now (the clock counts work,
        not idle time). True if it did, so the run goes on."""
        if not self._due:
            return False
        self._restart(*self._due.pop(0))
        return True

    def ending(self, group: CapGroup) -> None:
        """A cap group is ending (its threads are gone, its memory not yet): if it is a
        supervised server, keep its memory and plan its restart."""
        server = self._of(group)
        if server is None or server.stopping:
            return
        ending = group.ending
        assert ending is not None
        if ending.state is GroupState.EXITED and ending.status == 0:
            return  # a clean exit is not a crash
        if server.keep is not None:
            server.kept = self._take_kept(group, server.keep)
        now = self.kernel.machine.clock()
        server.attempts += 1
        record = Restart(
            server.name, server.attempts, group.pid, describe(ending), now,
            now + server.policy.delay(server.attempts),
        )  # fmt: skip
        self.restarts.append(record)
        if server.attempts > server.policy.limit:
            record.gave_up = f"restart limit {server.policy.limit} reached"
            self._free_kept(server)
            return
        self._due.append((server, record))
        self._due.sort(key=lambda due: due[1].due_at)

    # -- internals ---------------------------------------------------------------------

    def moved(self, group: CapGroup, *, to_kernel: bool) -> None:
        """A server migrated (kernel/migration.py): from now on it restarts where it is."""
        server = self._of(group)
        if server is not None:
            server.in_kernel = to_kernel

    def _server(self, name: str) -> Supervised:
        if name not in self.servers:
            raise UserError(f"no supervised server named {name!r}")
        return self.servers[name]

    def _of(self, group: CapGroup) -> Supervised | None:
        for server in self.servers.values():
            if server.group is group:
                return server
        return None

    def _safe(self) -> bool:
        """Is no thread inside gate or trampoline code?"""
        return not any(
            self._in_call_code(thread.context.rip)
            for group in self.kernel.groups.values()
            if group.running
            for thread in group.threads
            if thread.alive
        )

    def _in_call_code(self, rip: int) -> bool:
        return self.kernel.placement.in_gate(rip) or sky.in_trampoline(rip)

    def _next_deadline(self) -> int | None:
        instants = [instant for instant, _ in self._kills[:1]]
        instants += [record.due_at for _, record in self._due[:1]]
        return min(instants) if instants else None

    def _spawn(
        self, elf: bytes, argv: list[str], in_kernel: bool, options: dict[str, object]
    ) -> CapGroup:
        return self.kernel.spawn(elf, list(argv), name=argv[0], in_kernel=in_kernel, **options)  # type: ignore[arg-type]

    def _restart(self, server: Supervised, record: Restart) -> None:
        try:
            group = self._spawn(server.elf, server.argv, server.in_kernel, server.spawn_options)
        except UserError as error:  # e.g. no protection key left for its domain
            record.gave_up = f"cannot start again: {error}"
            self._free_kept(server)
            return
        if server.kept:
            assert server.keep is not None
            group.vmspace.replace_private(server.keep[0], server.kept)
            server.kept = []
        server.group = group
        record.new_pid = group.pid
        record.started_at = self.kernel.machine.clock()
        if self.kernel.tracer is not None:
            where = "kernel space" if server.in_kernel else "user space"
            self.kernel.tracer.lifecycle("restart", group, attempt=server.attempts, to=where)
        self._waiting_service.append((server, record, group))

    def _note_serving(self, now: int) -> None:
        for entry in list(self._waiting_service):
            server, record, instance = entry  # the instance this record started, only
            registered = self.kernel.services.get(server.service)
            if registered is not None and registered.server is instance:
                record.serving_at = now
                self._waiting_service.remove(entry)
            elif not instance.running:
                self._waiting_service.remove(entry)

    def _take_kept(self, group: CapGroup, keep: tuple[int, int]) -> list[PhysAddr]:
        vaddr, size = keep
        return group.vmspace.release_private(vaddr, -(-size // PAGE_SIZE))

    def _free_kept(self, server: Supervised) -> None:
        for frame in server.kept:
            self.kernel.machine.frames.free(frame)
        server.kept = []


def describe(ending: Ending) -> str:
    """How a group ended, in a few words."""
    if ending.state is GroupState.FAULTED:
        return f"faulted: {ending.fault.describe() if ending.fault else 'unknown'}"
    return f"exited {ending.status}"
