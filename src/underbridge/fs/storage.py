"""The storage stack on a kernel: the ramdisk serving "blk", the fs server serving "fs".

Start order is fixed: ramdisk first, then fs, whose main connects to "blk" and mounts
it (formatting an empty device) before it registers "fs". `start_storage` runs the
kernel until each server has registered its service and blocked serving it, so the
caller finds both ready; a server that dies on the way raises StorageError with its
console output.

Both servers run under the kernel's supervisor (kernel/supervisor.py), which restarts
either when it crashes or is killed, in the same placement.

Ownership and invariants:
  - The disk is the ramdisk's `ub_ramdisk` array, in the ramdisk's memory only; its
    pages are the memory the supervisor keeps when the ramdisk dies and hands to the
    restarted one, so the disk survives a block-server restart, as a disk would.
  - The fs server keeps nothing across requests that the device does not have (ubfs.h),
    so it may end at any point between requests: the new one mounts the same device
    and sees every completed change. It reconnects to a restarted ramdisk by itself
    (guest/servers/fs/bio.c, blk_lost).
  - `Storage.fs` and `Storage.ramdisk` are always the groups currently running as those
    servers (the supervisor's); a restart ends the old group first, which closes its
    connections and removes its service (client connections to it break: calls on them
    return -EPIPE, and their handles are gone with the old server).
  - `disk_image` reads the array out of emulated memory through the ramdisk's page
    table, at the address its ELF symbol table gives; it copies, so later writes do
    not change an image already taken.
  - Link bases are 16 MiB aligned, as in-kernel servers require (each gets one 16 MiB
    region), and distinct from the IPC benchmark's (0x0100_0000, 0x0200_0000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from underbridge.errors import UnderbridgeError
from underbridge.guestbuild.toolchain import build_program, symbol
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup
from underbridge.kernel.objects.thread import ThreadState
from underbridge.kernel.supervisor import Policy, Supervisor

RAMDISK_BASE = 0x0300_0000
FS_BASE = 0x0400_0000
FSTEST_BASE = 0x0500_0000
BLK_SERVICE = "blk"
FS_SERVICE = "fs"
DISK_SYMBOL = "ub_ramdisk"


class StorageError(UnderbridgeError):
    """A storage server did not come up, or its disk cannot be found."""


def console_text(group: CapGroup) -> str:
    """What a guest printed, as text."""
    return bytes(group.console).decode(errors="replace")


def serving(kernel: Kernel, group: CapGroup, service: str) -> bool:
    """Has `group` registered `service` and blocked to serve it?"""
    registered = kernel.services.get(service)
    return (
        registered is not None
        and registered.server is group
        and group.threads[0].state is ThreadState.BLOCKED
    )


def wait_until_serving(kernel: Kernel, group: CapGroup, service: str) -> CapGroup:
    """Run the kernel until `group` serves `service`, or raise."""
    kernel.run(until=lambda: serving(kernel, group, service) or not group.running)
    if not serving(kernel, group, service):
        how = (
            f"ended {group.state.value} ({group.exit_status}, {group.fault})"
            if not group.running
            else "is not serving (nothing left to run)"
        )
        raise StorageError(f"{group.name} {how}: {console_text(group)!r}")
    return group


def spawn_server(
    kernel: Kernel,
    elf: Path,
    argv: list[str],
    service: str,
    *,
    in_kernel: bool,
    keep: tuple[int, int] | None = None,
) -> CapGroup:
    """Start a server under the kernel's supervisor (made if it has none) and run the
    kernel until it serves `service`, or raise."""
    supervisor = kernel.supervisor or Supervisor(kernel)
    group = supervisor.start(
        elf, argv, service=service, in_kernel=in_kernel, keep=keep, policy=STORAGE_POLICY
    )
    return wait_until_serving(kernel, group, service)


STORAGE_POLICY = Policy()  # restart on any crash, with the supervisor's default backoff


@dataclass(eq=False)
class Storage:
    kernel: Kernel
    in_kernel: bool
    disk_at: int  # where ub_ramdisk is in the ramdisk's address space
    disk_size: int

    @property
    def supervisor(self) -> Supervisor:
        assert self.kernel.supervisor is not None
        return self.kernel.supervisor

    @property
    def ramdisk(self) -> CapGroup:
        return self.supervisor.group("ramdisk")

    @property
    def fs(self) -> CapGroup:
        return self.supervisor.group("fs")

    def restart_fs(self) -> CapGroup:
        """Kill the fs server now; its supervisor starts a new one on the same device.
        Runs the kernel until the new one serves, and returns it."""
        old = self.fs
        self.supervisor.kill_now("fs")
        self.kernel.run(until=lambda: self.fs is not old)
        return wait_until_serving(self.kernel, self.fs, FS_SERVICE)

    def disk_image(self) -> bytes:
        """A copy of the whole disk as the ramdisk holds it now."""
        if not self.ramdisk.running:
            raise StorageError(f"the ramdisk has ended: {console_text(self.ramdisk)!r}")
        image = self.kernel.machine.read_virtual(
            self.ramdisk.vmspace.table, self.disk_at, self.disk_size
        )
        if len(image) != self.disk_size:
            raise StorageError(f"only {len(image)} of the disk's {self.disk_size} bytes are mapped")
        return image

    def run_client(self, program: str, args: Sequence[str], *, base: int = FSTEST_BASE) -> CapGroup:
        """Run a bundled program as an application until it ends; return its group."""
        client = self.kernel.spawn(build_program(program, base=base), [program, *args])
        self.kernel.run(until=lambda: not client.running)
        return client


def start_fs(kernel: Kernel, *, in_kernel: bool) -> CapGroup:
    """Spawn the fs server (it mounts "blk", which must be served) and wait until it
    serves "fs"."""
    return spawn_server(
        kernel, build_program("fs", base=FS_BASE), ["fs"], FS_SERVICE, in_kernel=in_kernel
    )


def start_storage(kernel: Kernel, *, in_kernel: bool) -> Storage:
    """Start ramdisk and fs on `kernel` under its supervisor (in kernel space if
    in_kernel, which needs a design with domains) and return them serving."""
    ramdisk_elf = build_program("ramdisk", base=RAMDISK_BASE)
    disk_at, disk_size = symbol(ramdisk_elf, DISK_SYMBOL)
    spawn_server(
        kernel,
        ramdisk_elf,
        ["ramdisk"],
        BLK_SERVICE,
        in_kernel=in_kernel,
        keep=(disk_at, disk_size),
    )
    start_fs(kernel, in_kernel=in_kernel)
    return Storage(kernel, in_kernel, disk_at, disk_size)
