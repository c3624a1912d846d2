"""Loading an in-kernel server: scan, rewrite, verify (privilege deprivation, item 4).

A server whose ordinary code happens to hold a wrpkru pattern (inside an immediate) is
rewritten by the loader and passes the same client tests in kernel space as the
original does in user space; a driver's port I/O is rewritten into routine calls; a
server that really writes PKRU is refused, or sent to user space if so configured.
"""

from __future__ import annotations

import pytest

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.bridge.scan import scan_elf
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

# An echo-compatible server (guest/include/echo_proto.h) whose handler adds and then
# subtracts 0x90ef010f: the immediate's bytes 0f 01 ef are a hidden wrpkru.
MAGIC_ECHO = r"""
#include "ub.h"
#include "ub_ipc.h"
#include "echo_proto.h"

static void handle(struct ub_msg *msg)
{
    long x = msg->mr[3];
    __asm__ volatile("add $0x90ef010f, %k0\n\tsub $0x90ef010f, %k0" : "+r"(x));
    msg->mr[3] = x;
    if (msg->mr[0] == ECHO_BUF) {
        char *buf = msg->buf;
        long n = msg->mr[1] > ECHO_BUF_MAX ? ECHO_BUF_MAX : msg->mr[1];
        for (long i = 0, j = n - 1; i < j; i++, j--) {
            char t = buf[i]; buf[i] = buf[j]; buf[j] = t;
        }
        msg->mr[0] = 0;
    } else if (msg->mr[0] != ECHO_REGS) {
        msg->mr[0] = -UB_EINVAL;
    }
}

int main(void)
{
    long service = ub_ipc_register("echo", handle);
    if (service < 0)
        return 1;
    ub_ipc_serve(service, handle);
}
"""


@pytest.fixture(scope="module")
def magic_echo(tmp_path_factory):
    source = tmp_path_factory.mktemp("magic") / "magic_echo.c"
    source.write_text(MAGIC_ECHO)
    elf = build_program(source, base=ECHO_BASE)
    assert scan_elf(elf).pkru_writers  # the pattern is really there
    return elf


def serve_and_ping(mode: str, server_elf, *, in_kernel: bool) -> tuple[str, int, int]:
    machine = Machine()
    kernel = Kernel(machine, ipc=mode)
    server = kernel.spawn(server_elf, ["echo"], in_kernel=in_kernel)
    kernel.run(until=lambda: "echo" in kernel.services or not server.running)
    client = kernel.spawn(build_program("pingpong", base=PINGPONG_BASE), ["pingpong", "30", "echo"])
    kernel.run(until=lambda: not client.running)
    assert server.running, server.fault
    exits = machine.monitor.exits if machine.monitor else 0
    return bytes(client.console).decode(), client.exit_status, exits


def test_a_rewritten_server_passes_the_same_tests_as_the_original(magic_echo):
    original = serve_and_ping("sel4", magic_echo, in_kernel=False)
    rewritten = serve_and_ping("underbridge", magic_echo, in_kernel=True)
    assert original == ("pingpong: 30 rounds ok\n", 0, 0)
    assert rewritten == original


def test_the_loader_maps_the_rewritten_code(magic_echo):
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    server = kernel.spawn(magic_echo, ["echo"], in_kernel=True)
    text = [
        va
        for va, m in kernel.machine.kernel_space.mappings()
        if m.flags.executable and ECHO_BASE <= va < ECHO_BASE + (16 << 20)
    ]
    code = b"".join(
        kernel.machine.read_virtual(kernel.machine.kernel_space, va, 4096) for va in text
    )
    assert b"\x0f\x01\xef" not in code and len(text) > 1  # a trampoline segment was added
    assert kernel.placement.domain_of(server) is not None


def test_a_drivers_port_io_is_rewritten_into_routine_calls():
    outputs = []
    for rewrite in (False, True):
        machine = Machine()
        kernel = Kernel(machine, ipc="underbridge")
        driver = kernel.spawn(
            build_program("iodriver", base=0x0300_0000),
            ["iodriver", "7", "0x80"],
            in_kernel=True,
            io_ports=range(0x80, 0x81),
            rewrite=rewrite,
        )
        kernel.run()
        assert driver.state is GroupState.EXITED
        outputs.append((bytes(driver.console), driver.port_writes, machine.monitor.exits))
    trapped, rewritten = outputs
    assert trapped[:2] == rewritten[:2]
    assert trapped[2] == 8 and rewritten[2] == 0  # 7 out + 1 in trapped; none rewritten


def test_a_server_that_really_writes_pkru_is_refused_even_with_the_rewriter(tmp_path):
    source = tmp_path / "writer.c"
    source.write_text(
        '#include "ub.h"\nint main(void) {\n'
        '  __asm__ volatile("wrpkru" :: "a"(0), "c"(0), "d"(0));\n'
        "  return 0; }\n"
    )
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    with pytest.raises(UserError, match="can change PKRU"):
        kernel.spawn(build_program(source, base=0x0300_0000), ["writer"], in_kernel=True)
