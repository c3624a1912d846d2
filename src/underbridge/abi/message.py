"""The one register layout of an IPC message (four words, mr0..mr3), for every design.

Where the words travel on each leg of a call; the guest IPC library
(guest/include/ub_ipc.h, guest/runtime/ipc.c) and the gate template (bridge/gate.py) use
the same registers, and tests/abi/test_message_layout.py checks that they do:
  - IPC_CALL and IPC_REPLY_WAIT take a capability slot in RDI and the message in the
    next syscall argument registers (`SENT`): args[1:5] of the syscall;
  - IPC_REPLY_WAIT returns a call to the server as RAX = 0, RDI = the connection's
    badge, RSI = its buffer, and the message in `DELIVERED`;
  - IPC_CALL returns RAX = status and the reply in `REPLIED`;
  - a gate call (UnderBridge, in kernel space) carries it in `GATE_MESSAGE` both ways,
    and the gate returns the status in RAX.
A close notification is a delivery with no caller: REPLY_WAIT returns RAX = 0, RDI = the
badge of a connection its client has closed (or whose client has ended), RSI = 0 (no
buffer: it is gone) and mr0 = `CLOSED_OP`, the one reserved operation (UB_IPC_CLOSED in
ub_ipc.h); the server's reply to it goes nowhere. A real call always has a buffer, so a
server tells the two apart by RSI; a client that sends CLOSED_OP itself names only its
own badge, so it can make a server forget nothing but its own state.
The syscall legs differ from the gate's because a syscall's first argument register
(RDI) holds the slot; the gate needs none, and its registers are those of the handler's
C calling convention that the gate does not use for the badge and buffer.
"""

from __future__ import annotations

from underbridge.machine.context import SYSCALL_ARG_REGS, Reg

SENT = SYSCALL_ARG_REGS[1:5]  # RSI, RDX, R10, R8: after the slot in RDI
DELIVERED = (Reg.RDX, Reg.R10, Reg.R8, Reg.R9)
REPLIED = SENT
GATE_MESSAGE = (Reg.RSI, Reg.RDI, Reg.R8, Reg.R9)

#: What REPLY_WAIT writes into a server thread: RAX, badge, buffer, the message.
DELIVERY = (Reg.RAX, Reg.RDI, Reg.RSI, *DELIVERED)
#: What IPC_CALL writes into its caller: status, the reply.
REPLY = (Reg.RAX, *REPLIED)

#: mr0 of a close notification (ub_ipc.h UB_IPC_CLOSED): no protocol uses it for a call.
CLOSED_OP = -1
