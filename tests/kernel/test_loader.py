"""The kernel's loader: a parsed image's segments placed in a page table."""

from underbridge.elf.image import parse_elf
from underbridge.kernel.loader import map_image
from underbridge.machine.cpu import Machine


def test_map_image_keeps_segment_permissions_and_bytes(hello_elf):
    image = parse_elf(hello_elf.read_bytes(), name="hello")
    machine = Machine(accounting=False)
    table = machine.new_page_table()
    frames = map_image(machine, table, image, pkey=4)
    assert len(frames) == sum(len(range(s.vaddr & ~0xFFF, s.end, 0x1000)) for s in image.segments)
    for segment in image.segments:
        mapping = table.lookup(segment.vaddr & ~0xFFF)
        assert mapping.flags.user and mapping.flags.pkey == 4
        assert mapping.flags.executable == segment.executable
        assert mapping.flags.writable == segment.writable
        assert not (mapping.flags.writable and mapping.flags.executable)
        assert machine.read_virtual(table, segment.vaddr, len(segment.data)) == segment.data
