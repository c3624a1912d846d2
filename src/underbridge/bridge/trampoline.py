"""SkyBridge's trampoline: the code that carries one binding's calls between two address
spaces with VMFUNC, with no kernel on the path (Mi et al., EuroSys 2019, section 4).

The kernel generates one trampoline per binding (client -> server) and maps it r-x at
the same address in both parties' page tables, so execution carries on across the
`vmfunc` that switches the page table under it (machine/vmfunc.py).

Calling convention (the IPC library's `call *gate`, the same as an UnderBridge gate):
  in:  RSI, RDI, R8, R9 = mr0..mr3
  out: RAX = 0, -EBUSY if a call on this binding is in progress, or -EPERM if the call
       or the return did not carry the binding's calling key; RSI, RDI, R8, R9 = the
       reply's mr0..mr3 (zero unless RAX = 0)
  clobbers RAX, RCX, RDX, R10, R11 and flags; preserves RBX, RBP, R12-R15 and RSP.

Memory it uses, and who can write it:
  - the client record (CLIENT_* offsets), a page mapped in the client only: the calling
    key, the caller's saved registers, and the busy flag of the call in progress. Only
    the client can write it (its own forgery hurts only itself); no server can read it.
  - the server record, a page mapped in the server only: the server's copy of the key.
  - the server stack of this binding, in the server only.

What it does and checks, in order:
  1. Call half (client's view): one call at a time (busy flag); saves the caller's
     RSP and callee-saved registers, loads the calling key into R11, zeroes every
     register that is not part of the message, and executes `vmfunc` (EAX=0, ECX =
     the server's EPTP index): the same instruction stream continues in the server.
  2. Server half (server's view): the key in R11 must be the server's copy. A jump
     onto the `vmfunc` that skipped step 1 (no key, or a guessed one) is refused: it
     switches straight back (the caller's stack is untouched) and returns -EPERM.
  3. It installs the binding's server stack, builds a struct ub_msg (badge, buffer,
     mr) there, and calls the server's registered function.
  4. Return: the key goes back in R11 and `vmfunc` switches to the caller's EPTP index.
  5. Return half (client's view): a call must be in progress (else `ud2`: nothing
     returns into a client that did not call), and the key must be the client's own;
     a return with a forged key gets -EPERM and no reply. The busy flag is consumed,
     the caller's registers restored, the rest zeroed.
Every value is an immediate or a fixed absolute address below 2 GiB: the trampoline
trusts no register its caller controls but the message (and the key, which it checks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from underbridge.abi.syscalls import Errno
from underbridge.bridge.handler_call import handler_call
from underbridge.guestbuild.asm import assemble

SAVED_REGS = ("rsp", "rbx", "rbp", "r12", "r13", "r14", "r15")
SCRUBBED = ("ebx", "ebp", "edx", "r10d", "r12d", "r13d", "r14d", "r15d")
CLIENT_KEY = 0  # offsets in the client record
CLIENT_SAVED = 8
CLIENT_BUSY = CLIENT_SAVED + 8 * len(SAVED_REGS)
SERVER_KEY = 0  # offset in the server record
LOW_LIMIT = 1 << 31


@dataclass(frozen=True, slots=True)
class TrampolineSpec:
    address: int  # where the code is mapped (r-x, in client and server)
    client_index: int  # the client's own EPTP index (where the return switches to)
    server_index: int  # the server's EPTP index
    client_record: int  # the client's page
    server_record: int  # the server's page
    stack_top: int  # the binding's server stack, 16-byte aligned
    handler: int  # the server's registered void handler(struct ub_msg *)
    badge: int
    buffer: int  # the connection's shared buffer (same address in both)


def _check(spec: TrampolineSpec) -> None:
    for name in ("address", "client_record", "server_record", "stack_top"):
        if getattr(spec, name) + 4096 > LOW_LIMIT:
            raise ValueError(f"a trampoline's {name} must lie below 2 GiB")
    if spec.stack_top % 16:
        raise ValueError("the server stack top must be 16-byte aligned")
    if spec.badge >= 1 << 31:
        raise ValueError("badges beyond 2**31 do not fit the trampoline's immediate")


def _switch(index: int) -> list[str]:
    """VMFUNC leaf 0 (EPTP switching) to EPTP list entry `index`."""
    return ["xor eax, eax", f"mov ecx, {index}", "vmfunc"]


def trampoline_source(spec: TrampolineSpec) -> str:
    """The trampoline's assembly (Intel syntax)."""
    _check(spec)
    rec, srv = spec.client_record, spec.server_record
    busy = f"qword ptr [{rec + CLIENT_BUSY:#x}]"
    client_key = f"qword ptr [{rec + CLIENT_KEY:#x}]"
    server_key = f"qword ptr [{srv + SERVER_KEY:#x}]"
    saved = [
        (reg, f"qword ptr [{rec + CLIENT_SAVED + 8 * i:#x}]") for i, reg in enumerate(SAVED_REGS)
    ]
    lines = [
        # 1. the call half, in the client's view
        f"cmp {busy}, 0",
        "jne .Lbusy",
        f"mov {busy}, 1",
        *(f"mov {slot}, {reg}" for reg, slot in saved),
        f"mov r11, {client_key}",
        *(f"xor {reg}, {reg}" for reg in SCRUBBED),
        *_switch(spec.server_index),
        # 2. the server half, in the server's view: the calling key
        f"cmp r11, {server_key}",
        "jne .Lrefuse",
        "xor r11d, r11d",
        # 3. the server's function, on the binding's server stack
        *handler_call(
            spec.stack_top, spec.badge, spec.buffer, (f"mov rax, {spec.handler:#x}", "call rax")
        ),
        # 4. back, with the key
        f"mov r11, {server_key}",
        *_switch(spec.client_index),
        # 5. the return half, in the client's view
        f"cmp {busy}, 1",
        "jne .Labort",
        f"mov {busy}, 0",
        "xor eax, eax",
        f"cmp r11, {client_key}",
        "je .Lrestore",
        f"mov rax, {-int(Errno.EPERM)}",
        "xor esi, esi",
        "xor edi, edi",
        "xor r8d, r8d",
        "xor r9d, r9d",
        ".Lrestore:",
        *(f"mov {reg}, {slot}" for reg, slot in saved),
        "xor ecx, ecx",
        "xor edx, edx",
        "xor r10d, r10d",
        "xor r11d, r11d",
        "ret",
        # a call that skipped the call half: straight back, refused
        ".Lrefuse:",
        *_switch(spec.client_index),
        "xor r11d, r11d",
        f"mov rax, {-int(Errno.EPERM)}",
        "ret",
        ".Lbusy:",
        f"mov rax, {-int(Errno.EBUSY)}",
        "ret",
        ".Labort:",
        "ud2",
    ]
    return "\n".join(lines)


@functools.lru_cache(maxsize=256)
def generate(spec: TrampolineSpec) -> bytes:
    """The trampoline's machine code for its address (GNU as, once per spec)."""
    return assemble(trampoline_source(spec), origin=spec.address)
