"""How gates and trampolines call a server's handler: the message frame, in one place.

A server's handler is `long handler(struct ub_msg *msg)` (guest/include/ub_ipc.h): the
entry code builds the message on the server's stack (badge, buffer, mr0..mr3), calls
the handler with a pointer to it, and reloads mr0..mr3 from it for the reply. The
message words travel in abi/message.py's GATE_MESSAGE registers both ways.

Invariant: the frame lies at the top of a stack the caller cannot reach (the server's,
or the binding's), written after the entry code has switched to it.
"""

from __future__ import annotations

from underbridge.abi.message import GATE_MESSAGE

MSG_SIZE = 48  # struct ub_msg: badge, buf, mr[4]
_MR_AT = 16  # mr[0]'s offset in the frame, after badge and buf


def handler_call(stack_top: int, badge: int, buffer: int, call: tuple[str, ...]) -> list[str]:
    """Assembly lines: switch to `stack_top`, build the frame, run `call` (the handler
    call, e.g. a rel32 `call` or `mov rax, ...; call rax`), read the reply back."""
    words = [(reg.name.lower(), _MR_AT + 8 * index) for index, reg in enumerate(GATE_MESSAGE)]
    return [
        f"mov rsp, {stack_top - MSG_SIZE:#x}",
        f"mov qword ptr [rsp], {badge:#x}",
        f"mov rax, {buffer:#x}",
        "mov [rsp + 8], rax",
        *(f"mov [rsp + {offset}], {reg}" for reg, offset in words),
        "mov rdi, rsp",
        *call,
        *(f"mov {reg}, [rsp + {offset}]" for reg, offset in words),
    ]
