"""Regression: closed connections stayed in their service's and their client's lists.

Kernel.close_connection freed a connection's buffer but left the Connection in
`Service.connections` and in the client's `owned` list, so a client that connects and
closes in a loop grew both forever (3,000 entries after 3,000 cycles), each entry
keeping its client cap group alive. Fixed by removing a connection from both lists
when it is closed. Since the service no longer sees closed connections, a caller whose
connection is closed during its call is found by the thread's `calling` instead: it
still gets EPIPE when the server dies.
"""

from underbridge.abi.syscalls import Errno, Sys
from underbridge.kernel.dispatch import dispatch
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.thread import ThreadState
from underbridge.kernel.process_image import USER_STACK_TOP
from underbridge.kernel.umem import copy_out
from underbridge.machine.context import Reg
from underbridge.machine.cpu import Machine

NAME_AT = USER_STACK_TOP - 0x4000  # in the initial stack pages: writable user memory
HANDLER = 0x40_1000


def sys(kernel, thread, number, *args):
    return dispatch(kernel, thread, number, (*args, *[0] * (6 - len(args))))


def connect(kernel, thread):
    copy_out(kernel.machine, thread.group.vmspace.table, NAME_AT, b"echo", pkru=0)
    return sys(kernel, thread, Sys.IPC_CONNECT, NAME_AT, 4)


def setup(hello_elf):
    kernel = Kernel(Machine(accounting=False))
    server = kernel.spawn(hello_elf, name="server").threads[0]
    client = kernel.spawn(hello_elf, name="client").threads[0]
    copy_out(kernel.machine, server.group.vmspace.table, NAME_AT, b"echo", pkru=0)
    service_slot = sys(kernel, server, Sys.IPC_REGISTER, NAME_AT, 4, HANDLER)
    return kernel, server, client, service_slot


def test_closing_a_connection_removes_it_from_both_lists(hello_elf):
    kernel, _server, client, _slot = setup(hello_elf)
    service = kernel.services["echo"]
    for _ in range(50):
        slot = connect(kernel, client)
        assert len(service.connections) == 1 and len(client.group.owned) == 1
        assert sys(kernel, client, Sys.CAP_DELETE, slot) == 0
    assert service.connections == [] and client.group.owned == []


def test_a_caller_whose_connection_was_closed_mid_call_fails_when_the_server_dies(hello_elf):
    kernel, server, client, service_slot = setup(hello_elf)
    conn = connect(kernel, client)
    kernel.sched.pick()
    sys(kernel, server, Sys.IPC_REPLY_WAIT, service_slot, 0, 0, 0, 0)  # receiving
    kernel.sched.pick()
    assert sys(kernel, client, Sys.IPC_CALL, conn, 1, 2, 3, 4) is None
    assert server.reply_to is client and client.state is ThreadState.BLOCKED
    helper = kernel.add_thread(client.group, ring=3, rip=HANDLER, rsp=NAME_AT)
    assert sys(kernel, helper, Sys.CAP_DELETE, conn) == 0  # closed during the call
    assert kernel.services["echo"].connections == []
    sys(kernel, server, Sys.EXIT, 0)
    assert client.state is ThreadState.READY
    assert client.context[Reg.RAX] == -Errno.EPIPE & (2**64 - 1)
