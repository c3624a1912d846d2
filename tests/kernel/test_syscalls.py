"""Every syscall's success and error paths, through the real syscall entry (dispatch).

Each test drives `dispatch` for the main thread of a real cap group on a real machine,
exactly as the run loop does after a guest's `syscall`; pointers are checked against
the group's real page table. End-to-end guest runs are in test_kernel.py/test_ipc.py.
"""

from __future__ import annotations

import pytest

from underbridge.abi.syscalls import SYSCALLS, Errno, ObjType, Prot, Rights, Sys
from underbridge.kernel.dispatch import HANDLERS, dispatch
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.kernel.process_image import USER_STACK_TOP
from underbridge.kernel.umem import copy_in, copy_out
from underbridge.machine.boot import KERNEL_DATA
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine

SCRATCH = USER_STACK_TOP - 0x4000  # inside the initial stack pages: writable user memory
FREE_VA = 0x3000_0000  # nothing is mapped here


class Guest:
    """One cap group whose main thread makes syscalls from Python."""

    def __init__(self, kernel: Kernel, elf, name: str) -> None:
        self.kernel = kernel
        self.group = kernel.spawn(elf, name=name)
        self.thread = self.group.threads[0]

    def sys(self, number: Sys, *args: int) -> int | None:
        padded = (*args, *([0] * (6 - len(args))))
        return dispatch(self.kernel, self.thread, number, padded)

    def put(self, data: bytes, offset: int = 0) -> int:
        copy_out(self.kernel.machine, self.group.vmspace.table, SCRATCH + offset, data, pkru=0)
        return SCRATCH + offset

    def get(self, vaddr: int, length: int) -> bytes:
        return copy_in(self.kernel.machine, self.group.vmspace.table, vaddr, length, pkru=0)


@pytest.fixture
def kernel():
    return Kernel(Machine(accounting=False))


@pytest.fixture
def guest(kernel, hello_elf):
    return Guest(kernel, hello_elf, "alice")


@pytest.fixture
def other(kernel, hello_elf):
    return Guest(kernel, hello_elf, "bob")


def err(errno: Errno) -> int:
    return -int(errno)


def test_every_syscall_has_a_handler_and_unknown_numbers_are_enosys(guest):
    assert set(HANDLERS) == {spec.number for spec in SYSCALLS}
    assert guest.sys(999) == err(Errno.ENOSYS)


# -- write / exit / yield -----------------------------------------------------------


def test_write(guest):
    assert guest.sys(Sys.WRITE, guest.put(b"hi!"), 3) == 3
    assert bytes(guest.group.console) == b"hi!"
    assert guest.sys(Sys.WRITE, KERNEL_DATA, 8) == err(Errno.EFAULT)
    assert guest.sys(Sys.WRITE, FREE_VA, 8) == err(Errno.EFAULT)
    assert guest.sys(Sys.WRITE, SCRATCH, 1 << 30) == err(Errno.EFAULT)


def test_exit_ends_the_group_and_revokes_what_it_owned(guest):
    pmo_slot = guest.sys(Sys.PMO_CREATE, 4096)
    pmo = guest.group.caps.get(pmo_slot).obj
    guest.sys(Sys.EXIT, 3)
    assert guest.group.exit_status == 3 and not guest.group.running
    assert not pmo.alive and guest.thread.state is ThreadState.DEAD


def test_yield_rotates_the_ready_queue(kernel, guest, other):
    kernel.sched.pick()  # alice runs
    assert guest.sys(Sys.YIELD) == 0
    assert kernel.sched.pick() is other.thread


# -- capabilities -----------------------------------------------------------------


def test_cap_copy_only_shrinks_rights(guest):
    slot = guest.sys(Sys.NOTIF_CREATE)
    weaker = guest.sys(Sys.CAP_COPY, slot, Rights.WAIT)
    assert guest.sys(Sys.CAP_INFO, weaker) == (ObjType.NOTIFICATION << 16) | Rights.WAIT
    again = guest.sys(Sys.CAP_COPY, weaker, Rights.ALL)  # asking for more gives nothing more
    assert guest.sys(Sys.CAP_INFO, again) & 0xFFFF == Rights.WAIT
    assert guest.sys(Sys.NOTIF_SIGNAL, weaker) == err(Errno.EPERM)
    assert guest.sys(Sys.CAP_COPY, slot, 1 << 20) == err(Errno.EINVAL)
    assert guest.sys(Sys.CAP_COPY, 555, Rights.ALL) == err(Errno.EBADCAP)


def test_cap_delete_and_info_errors(guest):
    slot = guest.sys(Sys.NOTIF_CREATE)
    assert guest.sys(Sys.CAP_DELETE, slot) == 0
    assert guest.sys(Sys.CAP_INFO, slot) == err(Errno.EBADCAP)
    assert guest.sys(Sys.CAP_DELETE, slot) == err(Errno.EBADCAP)
    assert guest.sys(Sys.CAP_INFO, -1) == err(Errno.EBADCAP)


def test_cap_grant_moves_a_weaker_cap_to_another_group(kernel, guest, other, hello_elf):
    kernel.register_program("hello", hello_elf)
    child = guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0)
    notif = guest.sys(Sys.NOTIF_CREATE)
    given = guest.sys(Sys.CAP_GRANT, child, notif, Rights.SIGNAL)
    child_group = guest.group.caps.get(child).obj
    cap = child_group.caps.get(given)
    assert cap.obj is guest.group.caps.get(notif).obj and cap.rights == Rights.SIGNAL
    no_grant = guest.sys(Sys.CAP_COPY, notif, Rights.SIGNAL)
    assert guest.sys(Sys.CAP_GRANT, child, no_grant, Rights.ALL) == err(Errno.EPERM)
    assert guest.sys(Sys.CAP_GRANT, notif, notif, Rights.ALL) == err(Errno.EWRONGTYPE)
    weak_child = guest.sys(Sys.CAP_COPY, child, Rights.READ)
    assert guest.sys(Sys.CAP_GRANT, weak_child, notif, Rights.ALL) == err(Errno.EPERM)


def test_destroying_an_object_revokes_every_copy_everywhere(kernel, guest, hello_elf):
    kernel.register_program("hello", hello_elf)
    child = guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0)
    child_group = guest.group.caps.get(child).obj
    pmo = guest.sys(Sys.PMO_CREATE, 4096)
    copy = guest.sys(Sys.CAP_COPY, pmo, Rights.READ)
    given = guest.sys(Sys.CAP_GRANT, child, pmo, Rights.READ)
    guest.sys(Sys.EXIT, 0)  # the owner ends: its memory object is destroyed
    for table, slot in ((guest.group.caps, copy), (child_group.caps, given)):
        with pytest.raises(Exception) as error:
            table.get(slot)
        assert error.value.errno == Errno.EBADCAP


# -- memory objects -------------------------------------------------------------------


def test_pmo_create_map_share_unmap(guest, other, kernel, hello_elf):
    slot = guest.sys(Sys.PMO_CREATE, 5000)  # rounds up to two pages
    assert guest.sys(Sys.PMO_MAP, slot, FREE_VA, Prot.READ | Prot.WRITE) == 0
    guest.kernel.machine.mem.write(guest.group.vmspace.table.translate(FREE_VA + 4096), b"xy")
    assert guest.get(FREE_VA + 4096, 2) == b"xy"
    assert guest.sys(Sys.PMO_MAP, slot, FREE_VA, Prot.READ) == err(Errno.EBUSY)
    kernel.register_program("hello", hello_elf)
    child = guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0)
    given = guest.sys(Sys.CAP_GRANT, child, slot, Rights.READ)
    child_group = guest.group.caps.get(child).obj
    child_thread = child_group.threads[0]
    assert dispatch(kernel, child_thread, Sys.PMO_MAP, (given, FREE_VA, Prot.READ, 0, 0, 0)) == 0
    assert dispatch(
        kernel, child_thread, Sys.PMO_MAP, (given, FREE_VA + 0x10000, Prot.WRITE, 0, 0, 0)
    ) == err(Errno.EPERM)
    assert copy_in(kernel.machine, child_group.vmspace.table, FREE_VA + 4096, 2, pkru=0) == b"xy"
    assert not child_group.vmspace.table.lookup(FREE_VA).flags.writable
    assert guest.sys(Sys.PMO_UNMAP, FREE_VA) == 0
    assert guest.group.vmspace.table.lookup(FREE_VA) is None
    assert guest.sys(Sys.PMO_UNMAP, FREE_VA) == err(Errno.EINVAL)


@pytest.mark.parametrize(
    ("size", "vaddr", "prot", "errno"),
    [
        (0, FREE_VA, Prot.READ, Errno.EINVAL),  # create: empty
        (1 << 40, FREE_VA, Prot.READ, Errno.EINVAL),  # create: too large
        (4096, FREE_VA + 1, Prot.READ, Errno.EINVAL),  # map: unaligned
        (4096, KERNEL_DATA, Prot.READ, Errno.EINVAL),  # map: kernel half
        (4096, 0x1000, Prot.READ, Errno.EINVAL),  # map: below user space
        (4096, FREE_VA, 0, Errno.EINVAL),  # map: no protection
        (4096, FREE_VA, 8, Errno.EINVAL),  # map: unknown protection bit
        (4096, 0x40_0000, Prot.READ, Errno.EBUSY),  # map: over the program image
    ],
)
def test_pmo_errors(guest, size, vaddr, prot, errno):
    slot = guest.sys(Sys.PMO_CREATE, size)
    if size in (0, 1 << 40):
        assert slot == err(errno)
        return
    assert guest.sys(Sys.PMO_MAP, slot, vaddr, prot) == err(errno)


def test_pmo_map_needs_a_memory_object(guest):
    notif = guest.sys(Sys.NOTIF_CREATE)
    assert guest.sys(Sys.PMO_MAP, notif, FREE_VA, Prot.READ) == err(Errno.EWRONGTYPE)


def test_pmo_create_reports_exhausted_memory(kernel, guest):
    frames = kernel.machine.frames
    hoard = [frames.alloc() for _ in range(frames.free_frames - 1)]
    assert guest.sys(Sys.PMO_CREATE, 8192) == err(Errno.ENOMEM)
    assert frames.free_frames == 1  # the partial allocation was given back
    for frame in hoard:
        frames.free(frame)


def test_exhausted_memory_is_enomem_and_leaks_nothing(kernel, hello_elf):
    frames = kernel.machine.frames
    baseline = frames.free_frames
    guest = Guest(kernel, hello_elf, "alice")
    kernel.register_program("hello", hello_elf)
    pmo = guest.sys(Sys.PMO_CREATE, 4096)
    outcomes = set()
    for keep in (0, 1, 2, 5, 12):  # run out at different points of the work
        hoard = [frames.alloc() for _ in range(frames.free_frames - keep)]
        assert guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0) == err(Errno.ENOMEM)
        outcomes.add(guest.sys(Sys.PMO_MAP, pmo, FREE_VA + keep * 0x10_0000_0000, Prot.READ))
        for frame in hoard:
            frames.free(frame)
    assert outcomes == {0, err(Errno.ENOMEM)}  # both the failing and the working path ran
    assert guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0) >= 0
    for group in list(kernel.groups.values()):
        kernel.kill(group)
    assert frames.free_frames == baseline  # everything came back


# -- spawn / wait / threads -----------------------------------------------------------


def test_spawn_and_wait(kernel, guest, hello_elf):
    kernel.register_program("hello", hello_elf)
    child = guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, guest.put(b"a\0bc\0", 64), 5)
    assert guest.sys(Sys.CAP_INFO, child) == (ObjType.CAP_GROUP << 16) | Rights.READ | Rights.GRANT
    info = SCRATCH + 256
    assert guest.sys(Sys.WAIT, child, info) is None  # blocks
    assert guest.thread.state is ThreadState.BLOCKED
    kernel.run()
    assert guest.thread.context[Reg.RAX] == 0
    assert guest.get(info, 16) == (0).to_bytes(8, "little") * 2  # exited normally, status 0
    assert guest.sys(Sys.WAIT, child, info) == 0  # waiting again on a zombie returns at once


def test_spawn_and_wait_errors(kernel, guest):
    assert guest.sys(Sys.SPAWN, guest.put(b"nope"), 4, SCRATCH, 0) == err(Errno.ESRCH)
    assert guest.sys(Sys.SPAWN, KERNEL_DATA, 4, SCRATCH, 0) == err(Errno.EFAULT)
    assert guest.sys(Sys.SPAWN, SCRATCH, 0, SCRATCH, 0) == err(Errno.EINVAL)
    assert guest.sys(Sys.SPAWN, SCRATCH, 4, SCRATCH, 1 << 20) == err(Errno.EINVAL)
    notif = guest.sys(Sys.NOTIF_CREATE)
    assert guest.sys(Sys.WAIT, notif, SCRATCH) == err(Errno.EWRONGTYPE)
    assert guest.sys(Sys.WAIT, 99, SCRATCH) == err(Errno.EBADCAP)


def test_wait_checks_the_info_pointer_before_blocking(kernel, guest, hello_elf):
    kernel.register_program("hello", hello_elf)
    child = guest.sys(Sys.SPAWN, guest.put(b"hello"), 5, SCRATCH, 0)
    assert guest.sys(Sys.WAIT, child, 0x40_0000) == err(Errno.EFAULT)  # read-only code
    weak = guest.sys(Sys.CAP_COPY, child, Rights.GRANT)
    assert guest.sys(Sys.WAIT, weak, SCRATCH) == err(Errno.EPERM)


def test_thread_create_and_exit(kernel, guest):
    slot = guest.sys(Sys.THREAD_CREATE, 0x40_0000, SCRATCH, 77)
    assert guest.sys(Sys.CAP_INFO, slot) >> 16 == ObjType.THREAD
    new = guest.group.threads[1]
    assert new.context[Reg.RDI] == 77 and new.context.rip == 0x40_0000
    assert guest.sys(Sys.THREAD_CREATE, KERNEL_DATA, SCRATCH, 0) == err(Errno.EINVAL)
    assert guest.sys(Sys.THREAD_CREATE, 0x40_0000, SCRATCH + 8, 0) == err(Errno.EINVAL)
    dispatch(kernel, new, Sys.THREAD_EXIT, (0,) * 6)
    assert new.state is ThreadState.DEAD and guest.group.running
    guest.sys(Sys.THREAD_EXIT)
    assert not guest.group.running and guest.group.exit_status == 0


# -- notifications -----------------------------------------------------------------


def test_notifications_count_block_and_wake(kernel, guest, other):
    slot = guest.sys(Sys.NOTIF_CREATE)
    assert guest.sys(Sys.NOTIF_SIGNAL, slot) == 0
    assert guest.sys(Sys.NOTIF_WAIT, slot) == 0  # takes the pending signal
    assert guest.sys(Sys.NOTIF_WAIT, slot) is None  # blocks at zero
    assert guest.thread.state is ThreadState.BLOCKED
    assert guest.sys  # the thread is blocked; signal from another holder
    given = guest.group.caps.get(slot).derive(Rights.SIGNAL)
    other_slot = other.group.caps.insert(given)
    assert other.sys(Sys.NOTIF_SIGNAL, other_slot) == 0
    assert guest.thread.state is ThreadState.READY and guest.thread.context[Reg.RAX] == 0
    assert other.sys(Sys.NOTIF_WAIT, other_slot) == err(Errno.EPERM)
    assert guest.sys(Sys.NOTIF_SIGNAL, guest.sys(Sys.PMO_CREATE, 4096)) == err(Errno.EWRONGTYPE)


# -- IPC -----------------------------------------------------------------------------


def register(guest: Guest, name: bytes) -> int:
    return guest.sys(Sys.IPC_REGISTER, guest.put(name, 512), len(name), 0x40_1000)


def test_register_and_connect(guest, other):
    service = register(guest, b"echo")
    assert guest.sys(Sys.CAP_INFO, service) == (ObjType.SERVICE << 16) | Rights.RECV
    assert register(guest, b"echo") == err(Errno.EEXIST)
    conn = other.sys(Sys.IPC_CONNECT, other.put(b"echo"), 4)
    assert other.sys(Sys.CAP_INFO, conn) == (ObjType.CONNECTION << 16) | Rights.CALL
    buffer = other.thread.context[Reg.RDI]
    assert other.thread.context[Reg.RSI] == 16 * 1024
    other.kernel.machine.mem.write(other.group.vmspace.table.translate(buffer), b"shared")
    assert guest.get(buffer, 6) == b"shared"  # same address, same frames, both sides
    assert other.sys(Sys.IPC_CONNECT, other.put(b"nope"), 4) == err(Errno.ESRCH)
    assert other.sys(Sys.IPC_CONNECT, KERNEL_DATA, 4) == err(Errno.EFAULT)
    assert other.sys(Sys.IPC_CONNECT, SCRATCH, 100) == err(Errno.EINVAL)


def test_call_needs_a_connection_with_call_right(guest, other):
    service = register(guest, b"echo")
    conn = other.sys(Sys.IPC_CONNECT, other.put(b"echo"), 4)
    weak = other.sys(Sys.CAP_COPY, conn, Rights.GRANT)
    assert other.sys(Sys.IPC_CALL, weak, 1, 2, 3, 4) == err(Errno.EPERM)
    assert other.sys(Sys.IPC_CALL, 77, 1, 2, 3, 4) == err(Errno.EBADCAP)
    assert guest.sys(Sys.IPC_CALL, service, 1, 2, 3, 4) == err(Errno.EWRONGTYPE)
    assert other.sys(Sys.IPC_REPLY_WAIT, conn, 0, 0, 0, 0) == err(Errno.EWRONGTYPE)


def test_badge_is_assigned_by_the_kernel_and_cannot_be_forged(kernel, guest, other):
    """Whatever a client puts in its registers, the server sees the kernel's badge."""
    service = register(guest, b"echo")
    conns = [other.sys(Sys.IPC_CONNECT, other.put(b"echo"), 4) for _ in range(2)]
    badges = [other.group.caps.get(slot).obj.badge for slot in conns]
    assert len(set(badges)) == 2
    kernel.sched.pick()  # alice, the server, runs first
    assert guest.sys(Sys.IPC_REPLY_WAIT, service, 0, 0, 0, 0) is None  # nobody yet: blocks
    forged = badges[0]
    kernel.sched.pick()
    other.thread.context[Reg.RDI] = conns[1]
    assert other.sys(Sys.IPC_CALL, conns[1], forged, forged, forged, forged) is None
    server = guest.thread.context
    assert server[Reg.RDI] == badges[1] != forged
    assert kernel.sched.current is guest.thread  # direct switch to the server


def test_call_and_reply_round_trip(kernel, guest, other):
    service = register(guest, b"echo")
    conn = other.sys(Sys.IPC_CONNECT, other.put(b"echo"), 4)
    kernel.sched.pick()
    guest.sys(Sys.IPC_REPLY_WAIT, service, 0, 0, 0, 0)
    kernel.sched.pick()
    other.sys(Sys.IPC_CALL, conn, 10, 20, 30, 40)
    server = guest.thread.context
    assert [server[r] for r in (Reg.RDX, Reg.R10, Reg.R8, Reg.R9)] == [10, 20, 30, 40]
    assert server[Reg.RSI] == other.group.caps.get(conn).obj.buffer_vaddr
    guest.sys(Sys.IPC_REPLY_WAIT, service, 11, 21, 31, 41)
    client = other.thread.context
    assert [client[r] for r in (Reg.RAX, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)] == [0, 11, 21, 31, 41]
    assert kernel.sched.current is other.thread  # direct switch back to the caller
    assert guest.thread.state is ThreadState.BLOCKED


def test_callers_queue_when_the_server_is_busy_and_fail_when_it_dies(
    kernel, guest, other, hello_elf
):
    register(guest, b"echo")
    conn = other.sys(Sys.IPC_CONNECT, other.put(b"echo"), 4)
    kernel.sched.pick()
    kernel.sched.pick()  # the server never receives; the call queues
    assert other.sys(Sys.IPC_CALL, conn, 1, 2, 3, 4) is None
    assert other.thread.state is ThreadState.BLOCKED
    buffer = other.group.caps.get(conn).obj.buffer_vaddr
    guest.sys(Sys.EXIT, 0)
    assert other.thread.state is ThreadState.READY
    assert other.thread.context[Reg.RAX] == err(Errno.EPIPE) & (2**64 - 1)
    # The connection is broken, not gone: the client keeps its buffer until it closes
    # it, and every later call fails with EPIPE.
    assert other.group.vmspace.table.lookup(buffer) is not None
    assert other.sys(Sys.IPC_CALL, conn, 1, 2, 3, 4) == err(Errno.EPIPE)
    assert other.sys(Sys.CAP_DELETE, conn) == 0
    assert other.group.vmspace.table.lookup(buffer) is None  # closed: the buffer is gone
    assert other.group.owned == []
