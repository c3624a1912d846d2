"""The monolithic design's call stub: a connection's entry point, which calls the server's
handler directly, as a function.

The IPC library calls a connection's entry point with the gate convention (ub_ipc.h,
bridge/gate.py): mr0..mr3 in RSI, RDI, R8, R9 both ways, the status in RAX. A handler
takes a `struct ub_msg *` (badge, buffer, mr[4]), so the stub builds one on the caller's
own stack, calls the handler, and hands the reply back:

    sub  rsp, 56                    ; struct ub_msg (48 bytes), RSP 16-byte aligned
    mov  qword ptr [rsp], badge
    mov  rax, buffer
    mov  [rsp + 8], rax
    mov  [rsp + 16], rsi            ; mr0..mr3
    ...
    mov  rdi, rsp
    call handler
    mov  rsi, [rsp + 16]            ; the reply's mr0..mr3
    ...
    add  rsp, 56
    xor  eax, eax
    ret

That is all a function call across the unchanged binaries' interface needs: 17
instructions. The handler is C compiled for the SysV ABI, so it keeps RBX, RBP, R12-R15
and RSP itself, which is what the convention promises the caller. What the stub does
not do, on purpose (no isolation, kernel/ipc/monolithic.py): check its caller, switch
PKRU or stacks, save or scrub registers, record the call.

Generated without an assembler: every instruction has a fixed encoding, and the three
values (badge imm32, buffer imm64, the call's rel32) are placed at fixed offsets; a test
checks the bytes against GNU as.
"""

from __future__ import annotations

import struct

MSG_FRAME = 56  # struct ub_msg's 48 bytes + 8: the handler is entered 16-byte aligned

_HEAD = bytes.fromhex("4883ec38" + "48c70424")  # sub rsp, 56; mov qword ptr [rsp], imm32
_BUFFER = bytes.fromhex("48b8")  # movabs rax, imm64
_ARGS = bytes.fromhex(
    "4889442408"  # mov [rsp + 8], rax
    "4889742410"  # mov [rsp + 16], rsi
    "48897c2418"  # mov [rsp + 24], rdi
    "4c89442420"  # mov [rsp + 32], r8
    "4c894c2428"  # mov [rsp + 40], r9
    "4889e7"  # mov rdi, rsp
    "e8"  # call rel32
)
_TAIL = bytes.fromhex(
    "488b742410"  # mov rsi, [rsp + 16]
    "488b7c2418"  # mov rdi, [rsp + 24]
    "4c8b442420"  # mov r8, [rsp + 32]
    "4c8b4c2428"  # mov r9, [rsp + 40]
    "4883c438"  # add rsp, 56
    "31c0"  # xor eax, eax
    "c3"  # ret
)
INSTRUCTIONS = 17
_CALL_END = len(_HEAD) + 4 + len(_BUFFER) + 8 + len(_ARGS) + 4  # where rel32 counts from


def stub_source(*, handler: int, badge: int, buffer: int) -> str:
    """The stub's assembly (Intel syntax): what `generate` encodes, for the test."""
    slots = [(reg, 16 + 8 * i) for i, reg in enumerate(("rsi", "rdi", "r8", "r9"))]
    moves = [f"mov [rsp + {offset}], {reg}" for reg, offset in slots]
    back = [f"mov {reg}, [rsp + {offset}]" for reg, offset in slots]
    return "\n".join(
        [
            f"sub rsp, {MSG_FRAME}",
            f"mov qword ptr [rsp], {badge:#x}",
            f"movabs rax, {buffer:#x}",
            "mov [rsp + 8], rax",
            *moves,
            "mov rdi, rsp",
            f"call {handler:#x}",
            *back,
            f"add rsp, {MSG_FRAME}",
            "xor eax, eax",
            "ret",
        ]
    )


def generate(*, address: int, handler: int, badge: int, buffer: int) -> bytes:
    """The stub's machine code, to be mapped at `address`. ValueError if a value does not
    fit its field (the badge a signed imm32, the handler within rel32 reach)."""
    rel = handler - (address + _CALL_END)
    if not 0 <= badge < 1 << 31:
        raise ValueError(f"badge {badge:#x} does not fit the stub's imm32")
    if not -(1 << 31) <= rel < 1 << 31:
        raise ValueError(f"handler {handler:#x} is out of a call's reach from {address:#x}")
    return b"".join(
        [
            _HEAD,
            struct.pack("<I", badge),
            _BUFFER,
            struct.pack("<Q", buffer & 0xFFFF_FFFF_FFFF_FFFF),
            _ARGS,
            struct.pack("<i", rel),
            _TAIL,
        ]
    )
