"""The gates of connections to in-kernel servers: their slots, pages, keys and code.

A connection to an in-kernel server gets a gate slot (kernel_space.py's windows), a
key for its buffer and control page, a save area in the client's domain (the kernel's,
for an application), a server stack in the server's domain, and a gate generated from
bridge/gate.py's template into its key-0 page.

The key economy (keys are spent only where isolation needs them; 15 in all):
  - an application's connection uses the SERVER's own key: the application reaches its
    buffer through its own page table, and on the kernel page table only the server (and
    the kernel, calling the gate for the application) may open it, which the server's
    key already says. No key is spent, so no application can exhaust the keys;
  - connections between the same two in-kernel servers share ONE key (`PairKeys`),
    opened by exactly those two PKRUs, released with the pair's last connection;
  - a design whose applications open a connection's key themselves (pku-shared:
    `app_key_per_connection`) gives each application connection a key of its own.

Invariants:
  - A slot is in exactly one of: free (`_slots`), a live gate (`by_conn`), a tombstone
    (its client's `tombstones`, answering -EPIPE until that client ends), or held for a
    connection whose client holds its address while the connection has no gate (`held`:
    a party moved to user space, migrate.py; it goes back when the connection closes).
  - A connection's pages are made all or nothing (`open`), and unmapped before their
    frames are freed (`close`).
  - A pair key is held by its live gates (`PairKeys` counts them): allocated, and
    opened in both parties' PKRUs, with the first; closed and released with the last.
  - A thread's PKRU is always the PKRU of the domain whose code it runs: when a domain's
    keys change (`share_key`), its threads at home and threads inside its handler
    follow, and every gate naming the domain is generated again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from underbridge.abi.syscalls import Errno, Prot
from underbridge.bridge import gate as gates
from underbridge.bridge.domain import KERNEL_KEY, kernel_call_pkru
from underbridge.errors import OutOfMemory, SyscallError
from underbridge.kernel.ipc import kernel_space as ks
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from underbridge.kernel.ipc.domains import Domains, DomainState
    from underbridge.kernel.kernel import Kernel
    from underbridge.kernel.objects.capgroup import CapGroup
    from underbridge.kernel.objects.connection import Connection


@dataclass(eq=False)
class GateState:
    conn: Connection
    slot: int  # its pages: GATE_WINDOW, CONTROL_WINDOW (, KERNEL_SAVE_WINDOW) + slot pages
    shared_key: int  # the key of its buffer and control page
    address: int
    control: int
    save_area: int
    stack_top: int
    client: DomainState | None  # None: an application (the kernel calls for it)
    server: DomainState
    pages: list[int] = field(default_factory=list)  # kernel_space pages to unmap
    borrowed: list[tuple[DomainState, int, int]] = field(default_factory=list)
    app_pkru: int | None = None  # an application calling the gate itself (pku-shared)
    own_key: bool = False  # its key is its own (pku-shared's applications), not shared

    @property
    def pair(self) -> frozenset[DomainState] | None:
        """The two in-kernel servers whose pair key it holds (None: not a pair key)."""
        if self.client is None or self.client is self.server:
            return None
        return frozenset((self.client, self.server))

    @property
    def caller_pkru(self) -> int:
        if self.client is not None:
            return self.client.pkru
        return kernel_call_pkru(self.shared_key) if self.app_pkru is None else self.app_pkru


class PairKeys:
    """The one key of each pair of in-kernel servers with connections between them, and
    how many live gates hold it."""

    def __init__(self) -> None:
        self._held: dict[frozenset[DomainState], list[int]] = {}  # pair -> [key, gates]

    def of(self, pair: frozenset[DomainState]) -> int | None:
        held = self._held.get(pair)
        return None if held is None else held[0]

    def hold(self, pair: frozenset[DomainState], key: int) -> bool:
        """One more gate holds the pair's key: True if it is the first."""
        held = self._held.setdefault(pair, [key, 0])
        held[1] += 1
        return held[1] == 1

    def drop(self, pair: frozenset[DomainState]) -> bool:
        """One gate fewer holds the pair's key: True if it was the last."""
        held = self._held[pair]
        held[1] -= 1
        if held[1]:
            return False
        del self._held[pair]
        return True

    def __len__(self) -> int:
        return len(self._held)


class Gates:
    """Live gates by connection, and the gate slots."""

    def __init__(
        self,
        domains: Domains,
        *,
        map_app_buffer: bool = True,
        app_tombstones: Callable[[CapGroup], list[int] | None] | None = None,
        app_key_per_connection: bool = False,
    ) -> None:
        self._domains = domains
        # True: an application's connection gets a key of its own, because the
        # application opens it itself (pku-shared); False: the server's key serves.
        self._app_key_per_connection = app_key_per_connection
        self.pair_keys = PairKeys()
        # Where an application's tombstones are kept, if it calls gates itself
        # (pku-shared): None for an application that does not.
        self._app_tombstones = app_tombstones
        # False: an application client's buffer is the server's mapping, copied into the
        # application's page table under the shared key (pku-shared), not its own.
        self._map_app_buffer = map_app_buffer
        self.by_conn: dict[Connection, GateState] = {}
        # Slots of gates whose address an in-kernel client was given (IPC_CONNECT): the
        # slot stays the connection's while it lives, through migrations (migrate.py).
        self.held: dict[Connection, int] = {}
        self._slots = ks.Slots()
        # Gates generated so far, and the 8-byte words of code written (migration costs).
        self.emitted = 0
        self.emitted_words = 0

    def of(self, conn: Connection) -> GateState | None:
        return self.by_conn.get(conn)

    def __iter__(self) -> Iterator[GateState]:
        return iter(self.by_conn.values())

    # -- opening ----------------------------------------------------------------------

    def open(
        self, kernel: Kernel, conn: Connection, client: DomainState | None, server: DomainState
    ) -> GateState:
        """The gate of a new connection to an in-kernel server, with its key and pages.
        ENOKEY (before any work) if it needs a key and none is left."""
        key, fresh = self._key_for(conn, client, server)
        try:
            # A slot whose gate address the client holds stays the connection's (migrate.py).
            slot = self.held.get(conn) or self._slots.take()
        except SyscallError:
            if fresh:
                self._domains.keys.release(key)
            raise
        try:
            # The buffer: once on the kernel page table under the shared key, and in
            # an application client's own page table; neither party can unmap it.
            server.group.vmspace.map_pmo(
                conn.buffer, conn.buffer_vaddr, Prot.READ | Prot.WRITE, pkey=key, pinned=True
            )
            if client is None and self._map_app_buffer:
                conn.client.vmspace.map_pmo(
                    conn.buffer, conn.buffer_vaddr, Prot.READ | Prot.WRITE, pinned=True
                )
            state = self._build(kernel, conn, slot, key, client, server)
        except BaseException:
            if fresh:
                self._domains.keys.release(key)
            if conn not in self.held:
                self._slots.give_back(slot)
            raise
        state.own_key = client is None and self._app_key_per_connection
        self.by_conn[conn] = state
        pair = state.pair
        regenerated: list[GateState] = []
        if state.own_key or (pair is not None and self.pair_keys.hold(pair, key)):
            regenerated = self.share_key(kernel, [client, server], key, add=True)
        if state not in regenerated:  # each gate is generated once per change
            self._emit(kernel, state)
        return state

    def _key_for(
        self, conn: Connection, client: DomainState | None, server: DomainState
    ) -> tuple[int, bool]:
        """The key of a new connection's buffer and control page, and whether it was
        allocated just now (the key economy, in the module docstring)."""
        if client is None and self._app_key_per_connection:
            key = self._domains.keys.allocate(f"connection {conn.badge} to {conn.service.name}")
            return key, True
        if client is None or client is server:
            return server.domain.key, False
        pair = frozenset((client, server))
        key = self.pair_keys.of(pair)
        if key is not None:
            return key, False
        names = " and ".join(sorted((client.domain.name, server.domain.name)))
        return self._domains.keys.allocate(f"connections between {names}"), True

    def needs_key(self, client: DomainState | None, server: DomainState) -> bool:
        """Would a new connection between these parties take a key?"""
        if client is None:
            return self._app_key_per_connection
        pair = frozenset((client, server))
        return client is not server and self.pair_keys.of(pair) is None

    def _build(
        self,
        kernel: Kernel,
        conn: Connection,
        slot: int,
        key: int,
        client: DomainState | None,
        server: DomainState,
    ) -> GateState:
        """The connection's pages, all or nothing: ENOMEM leaves none of them behind."""
        gate_at = ks.GATE_WINDOW + slot * PAGE_SIZE
        control = ks.CONTROL_WINDOW + slot * PAGE_SIZE
        pages: list[int] = []
        borrowed: list[tuple[DomainState, int, int]] = []
        try:
            ks.map_page(kernel, gate_at, PageFlags(user=True, executable=True, pkey=KERNEL_KEY))
            pages.append(gate_at)
            ks.map_page(kernel, control, PageFlags(user=True, writable=True, pkey=key))
            pages.append(control)
            if client is None:
                save_area = ks.KERNEL_SAVE_WINDOW + slot * PAGE_SIZE
                ks.map_page(kernel, save_area, PageFlags(user=True, writable=True, pkey=KERNEL_KEY))
                pages.append(save_area)
            else:
                save_area = self._domains.take_pages(kernel, client, 1)
                borrowed.append((client, save_area, 1))
            stack_low = self._domains.take_pages(kernel, server, ks.CALL_STACK_PAGES)
            borrowed.append((server, stack_low, ks.CALL_STACK_PAGES))
        except (OutOfMemory, SyscallError) as error:
            ks.unmap_and_free(kernel, pages)
            for owner, low, count in borrowed:
                self._domains.return_pages(kernel, owner, low, count)
            if isinstance(error, SyscallError):
                raise
            raise SyscallError(Errno.ENOMEM, f"no memory for a connection: {error}") from error
        return GateState(
            conn,
            slot,
            key,
            gate_at,
            control,
            save_area,
            stack_low + ks.CALL_STACK_PAGES * PAGE_SIZE,
            client,
            server,
            pages,
            borrowed,
        )

    # -- keys and code ----------------------------------------------------------------

    def share_key(
        self, kernel: Kernel, parties: list[DomainState | None], key: int, *, add: bool
    ) -> list[GateState]:
        """Open (or close) a shared key in the parties' domains.

        A domain's PKRU changes, so every thread executing that domain's code follows:
        the domain's own threads at home, and threads of other domains that run its
        handler in a call (they hold its PKRU). A thread of the domain that is itself
        inside another domain's handler keeps that domain's PKRU: its way back is its
        gate's return half, whose immediate is rewritten here. A thread's PKRU is always
        the PKRU of the domain whose code it runs. Every gate naming a party is then
        generated again, once, with the parties' new PKRUs; returns those gates.
        """
        changed: list[DomainState] = []
        for party in parties:
            if party is None or party.group not in self._domains:
                continue
            old = party.pkru
            (party.domain.shared_keys.add if add else party.domain.shared_keys.discard)(key)
            for thread in self._domains.ring0_threads():
                if thread.context.pkru == old:
                    thread.context.pkru = party.pkru
            changed.append(party)
        regenerated = [
            gate
            for gate in self.by_conn.values()
            if gate.client in changed or gate.server in changed
        ]
        for gate in regenerated:
            self._emit(kernel, gate)
        return regenerated

    def emit(self, kernel: Kernel, state: GateState) -> None:
        """Generate the gate again (its caller's PKRU changed)."""
        self._emit(kernel, state)

    def _emit(self, kernel: Kernel, state: GateState) -> None:
        spec = gates.GateSpec(
            address=state.address,
            client_pkru=state.caller_pkru,
            server_pkru=state.server.pkru,
            save_area=state.save_area,
            control=state.control,
            stack_top=state.stack_top,
            handler=state.conn.service.handler,
            badge=state.conn.badge,
            buffer=state.conn.buffer_vaddr,
            current_thread=ks.CURRENT_THREAD_PAGE,
        )
        code = gates.generate(spec)
        self.emitted += 1
        self.emitted_words += -(-len(code) // 8)
        self._write_page(kernel, state.address, code)

    def _write_page(self, kernel: Kernel, address: int, code: bytes) -> None:
        frame = kernel.machine.kernel_space.translate(address)
        assert frame is not None
        kernel.machine.mem.zero(frame)
        kernel.machine.mem.write(frame, code)
        kernel.machine.code_changed(kernel.machine.kernel_space)

    # -- closing ----------------------------------------------------------------------

    def close(
        self, kernel: Kernel, state: GateState, *, server_gone: bool, migrating: bool = False
    ) -> None:
        """Release a gate's slot, pages and key (its call in progress has ended).

        If the server went away under a live client that calls the gate itself (an
        in-kernel one; an application under pku-shared), the gate's page stays,
        rewritten to answer -EPIPE (a tombstone), so the client's later calls fail
        cleanly instead of faulting; the slot is freed when the client ends.
        migrating: the connection lives on (a party is moving); a held slot stays held.
        """
        del self.by_conn[state.conn]
        pages = state.pages
        keeper = self._tombstones_of(state) if server_gone else None
        if migrating:
            if state.conn not in self.held:
                self._slots.give_back(state.slot)
        elif keeper is not None:
            self.held.pop(state.conn, None)
            pages = [page for page in pages if page != state.address]
            self._write_page(kernel, state.address, gates.tombstone())
            keeper.append(state.slot)
        else:
            self.held.pop(state.conn, None)
            self._slots.give_back(state.slot)
        ks.unmap_and_free(kernel, pages)
        for owner, low, count in state.borrowed:
            self._domains.return_pages(kernel, owner, low, count)
        pair = state.pair
        if state.own_key or (pair is not None and self.pair_keys.drop(pair)):
            self.share_key(kernel, [state.client, state.server], state.shared_key, add=False)
            self._domains.keys.release(state.shared_key)

    def release_held(self, conn: Connection) -> None:
        """A connection without a gate closes: the slot it held is free again."""
        slot = self.held.pop(conn, None)
        if slot is not None:
            self._slots.give_back(slot)

    def _tombstones_of(self, state: GateState) -> list[int] | None:
        """Where a gate whose server is gone is kept, if its client lives on and calls
        gates itself; None: it goes."""
        if state.client is not None:
            return state.client.tombstones if state.client.group.running else None
        if self._app_tombstones is None or not state.conn.client.running:
            return None
        return self._app_tombstones(state.conn.client)

    def release_tombstones(self, kernel: Kernel, slots: list[int]) -> None:
        """The client of these tombstone gates has ended: their slots are free again."""
        for slot in slots:
            ks.unmap_and_free(kernel, [ks.GATE_WINDOW + slot * PAGE_SIZE])
            self._slots.give_back(slot)
        slots.clear()
