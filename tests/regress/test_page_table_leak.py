"""Regression: connect/call/close cycles kept page-table frames for good.

PageTable.unmap cleared the leaf entry and nothing else, so a table (PT, PD, PDPT)
whose last mapping went away stayed allocated until the whole page table was
destroyed. Each connection's buffer lives at a new address (IPC_WINDOW + badge *
64 KiB), so a long-lived server's page table gained one page-table page every 32
connections (and the kernel page table one per 512 gates and control pages): 3,000
connect/call/close cycles against echo left 96 frames in use under sel4, 114 with echo
in kernel space. Fixed by freeing, in unmap, every table below the root that the
unmap left empty.
"""

from underbridge.abi.syscalls import Limit
from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.handlers.ipc import IPC_SLOT_SPACING, IPC_WINDOW
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.cpu import Machine
from underbridge.machine.paging import PageFlags
from underbridge.machine.physmem import PAGE_SIZE, PhysAddr

BUFFER_PAGES = Limit.IPC_BUFFER_SIZE // PAGE_SIZE


def test_mapping_and_unmapping_buffers_at_new_addresses_keeps_no_table():
    machine = Machine(accounting=False)
    table = machine.new_page_table()
    before = machine.frames.in_use
    buffer = [machine.frames.alloc() for _ in range(BUFFER_PAGES)]
    for badge in range(1, 201):  # 200 * 64 KiB: across six 2 MiB page tables
        base = IPC_WINDOW + badge * IPC_SLOT_SPACING
        for index, frame in enumerate(buffer):
            table.map(base + index * PAGE_SIZE, frame, PageFlags(writable=True, user=True))
        for index, frame in enumerate(buffer):
            assert table.unmap(base + index * PAGE_SIZE) == frame
        assert table.table_frames == 1, badge  # the root only
    for frame in buffer:
        machine.frames.free(PhysAddr(frame))
    assert machine.frames.in_use == before


def test_a_servers_page_table_does_not_grow_with_closed_connections():
    kernel = Kernel(Machine(accounting=False), ipc="sel4")
    echo = kernel.spawn(build_program("echo", base=ECHO_BASE), ["echo"])
    kernel.run(
        until=lambda: "echo" in kernel.services and echo.threads[0].state is ThreadState.BLOCKED
    )
    tables = echo.vmspace.table.table_frames
    before = kernel.machine.frames.in_use
    client = kernel.spawn(build_program("conncycle", base=PINGPONG_BASE), ["conncycle", "200"])
    kernel.run(until=lambda: not client.running)
    assert bytes(client.console) == b"conncycle: 200 cycles ok\n"
    assert echo.vmspace.table.table_frames == tables
    assert kernel.machine.frames.in_use == before
