"""The syscall table: the one source of syscall numbers, arguments and results.

Guests call `syscall` with the number in RAX and arguments in RDI, RSI, RDX, R10, R8,
R9 (the Linux x86-64 convention, so RCX and R11 are free for the hardware to clobber).
The result comes back in RAX, negative (-Errno) on error. A few calls return more
values in argument registers; their `results` say which.

Capabilities are named by slot numbers in the caller's cap group. Rights are the
`Rights` bits; a cap's rights can only shrink (copy and grant take a mask).

`guest/include/ub_syscall.h` is generated from this module by `render_header()`; a
test checks that the committed header is current.

A program running under the Linux personality (kernel/linux_abi.py: musl-linked guests
such as SQLite) owns the Linux numbers below LINUX_NATIVE_BASE; it reaches this table
at LINUX_NATIVE_BASE + number, which the header applies when UB_LINUX_ABI is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag


class Limit(IntEnum):
    """Sizes the kernel enforces, published to guests in the generated header."""

    NAME_MAX = 64  # service and program names, bytes
    SPAWN_ARGS_MAX = 4096  # SPAWN's NUL-separated argument block, bytes
    IPC_BUFFER_SIZE = 16 * 1024  # a connection's shared buffer, bytes
    CHANNEL_BYTES_MAX = 64 * 1024  # one channel message's bytes (Zircon's limit)
    CHANNEL_HANDLES_MAX = 64  # one channel message's handles (Zircon's limit)


LINUX_NATIVE_BASE = 0x1000  # native syscall n is LINUX_NATIVE_BASE + n for Linux-ABI guests


class Sys(IntEnum):
    """Syscall numbers (the wire values guests put in RAX)."""

    EXIT = 0
    WRITE = 1
    YIELD = 2
    SPAWN = 3
    WAIT = 4
    CAP_COPY = 5
    CAP_GRANT = 6
    CAP_DELETE = 7
    CAP_INFO = 8
    PMO_CREATE = 9
    PMO_MAP = 10
    PMO_UNMAP = 11
    THREAD_CREATE = 12
    THREAD_EXIT = 13
    NOTIF_CREATE = 14
    NOTIF_SIGNAL = 15
    NOTIF_WAIT = 16
    IPC_REGISTER = 17
    IPC_CONNECT = 18
    IPC_CALL = 19
    IPC_REPLY_WAIT = 20
    PORT_IO = 21
    CHANNEL_CREATE = 22
    CHANNEL_WRITE = 23
    CHANNEL_READ = 24
    CHANNEL_CALL = 25
    OBJECT_WAIT = 26
    PORT_CREATE = 27
    OBJECT_WAIT_ASYNC = 28
    PORT_WAIT = 29


class Errno(IntEnum):
    """Error codes; a failing syscall returns -Errno."""

    EPERM = 1  # the capability lacks a right the operation needs
    ESRCH = 3  # no such program or service name
    EAGAIN = 11  # nothing to read yet (a channel's queue is empty)
    EFAULT = 14  # a pointer the guest passed is not its to use
    EBUSY = 16  # the address range is already mapped
    EEXIST = 17  # the service name is already registered
    EINVAL = 22  # a malformed argument (alignment, size, flag bits)
    ENOSPC = 28  # the capability table is full
    ENOSYS = 38  # no such syscall
    ENOMEM = 12  # physical memory is exhausted
    EBADCAP = 77  # empty slot, out-of-range slot, or a revoked capability
    EWRONGTYPE = 78  # the capability names an object of another type
    EPIPE = 32  # the other side of the connection is gone
    EDEADLK = 35  # the call would block inside a migrated (gate) call
    EMSGSIZE = 90  # a channel message does not fit the limits or the reader's buffers
    ENOKEY = 126  # all protection keys are in use


class Rights(IntFlag):
    """What a capability allows. Copying can only clear bits."""

    READ = 1 << 0  # map a memory object readable; read a cap group's exit status
    WRITE = 1 << 1  # map a memory object writable
    CALL = 1 << 2  # call through a connection
    RECV = 1 << 3  # receive on a service
    SIGNAL = 1 << 4  # signal a notification
    WAIT = 1 << 5  # wait on a notification
    GRANT = 1 << 6  # copy this cap into another cap group / give caps to a cap group
    ALL = (1 << 7) - 1


class ObjType(IntEnum):
    """Kernel object types, as CAP_INFO reports them."""

    CAP_GROUP = 1
    THREAD = 2
    PMO = 3
    SERVICE = 4
    CONNECTION = 5
    NOTIFICATION = 6
    CHANNEL = 7  # one endpoint of a channel
    PORT = 8


class Signal(IntFlag):
    """What a channel endpoint asserts (OBJECT_WAIT, OBJECT_WAIT_ASYNC)."""

    READABLE = 1  # a message is queued
    PEER_CLOSED = 2  # the other endpoint is closed


class Prot(IntFlag):
    """PMO_MAP protection bits."""

    READ = 1
    WRITE = 2


@dataclass(frozen=True, slots=True)
class SyscallSpec:
    number: Sys
    args: tuple[str, ...]
    doc: str
    results: str = "RAX: 0 or -errno"


SYSCALLS: tuple[SyscallSpec, ...] = (
    SyscallSpec(Sys.EXIT, ("long status",), "end the calling cap group (all its threads)"),
    SyscallSpec(
        Sys.WRITE,
        ("const void *buf", "unsigned long len"),
        "append len bytes at buf to the console",
        "RAX: len or -errno",
    ),
    SyscallSpec(Sys.YIELD, (), "give up the rest of this time slice"),
    SyscallSpec(
        Sys.SPAWN,
        (
            "const char *name",
            "unsigned long name_len",
            "const char *args",
            "unsigned long args_len",
        ),
        "start the named program with NUL-separated args",
        "RAX: slot of a cap-group cap (READ|GRANT) or -errno",
    ),
    SyscallSpec(
        Sys.WAIT,
        ("long group_slot", "struct ub_exit_info *info"),
        "block until the cap group ends; write how it ended to *info",
    ),
    SyscallSpec(
        Sys.CAP_COPY,
        ("long slot", "unsigned long rights_mask"),
        "copy a cap in the caller's own table with rights & mask",
        "RAX: new slot or -errno",
    ),
    SyscallSpec(
        Sys.CAP_GRANT,
        ("long group_slot", "long slot", "unsigned long rights_mask"),
        "copy a GRANT cap into another cap group (needs GRANT on both caps)",
        "RAX: the slot in the other group or -errno",
    ),
    SyscallSpec(
        Sys.CAP_DELETE,
        ("long slot",),
        "empty a slot of the caller's table; deleting a connection cap closes the connection",
    ),
    SyscallSpec(
        Sys.CAP_INFO,
        ("long slot",),
        "the type and rights of a cap",
        "RAX: (type << 16) | rights or -errno",
    ),
    SyscallSpec(
        Sys.PMO_CREATE,
        ("unsigned long size",),
        "allocate a zeroed memory object of size bytes (rounded up to pages)",
        "RAX: slot (READ|WRITE|GRANT) or -errno",
    ),
    SyscallSpec(
        Sys.PMO_MAP,
        ("long pmo_slot", "unsigned long vaddr", "unsigned long prot"),
        "map the whole memory object at vaddr (page aligned) with UB_PROT_* bits",
    ),
    SyscallSpec(Sys.PMO_UNMAP, ("unsigned long vaddr",), "unmap the memory object mapped at vaddr"),
    SyscallSpec(
        Sys.THREAD_CREATE,
        ("unsigned long entry", "unsigned long stack_top", "unsigned long arg"),
        "start a thread at entry(arg) on the given stack",
        "RAX: slot of a thread cap or -errno",
    ),
    SyscallSpec(
        Sys.THREAD_EXIT,
        (),
        "end the calling thread (the cap group ends with its last thread, status 0)",
    ),
    SyscallSpec(
        Sys.NOTIF_CREATE,
        (),
        "create a notification (a counting semaphore)",
        "RAX: slot (SIGNAL|WAIT|GRANT) or -errno",
    ),
    SyscallSpec(Sys.NOTIF_SIGNAL, ("long slot",), "add one to the count, waking one waiter"),
    SyscallSpec(Sys.NOTIF_WAIT, ("long slot",), "block until the count is positive, take one"),
    SyscallSpec(
        Sys.IPC_REGISTER,
        ("const char *name", "unsigned long name_len", "unsigned long handler"),
        "offer a service under name; the caller's threads receive on it. handler "
        "is the address of the server's void handler(struct ub_msg *), recorded so "
        "that a later placement can enter it directly through a gate",
        "RAX: slot of the service cap (RECV) or -errno",
    ),
    SyscallSpec(
        Sys.IPC_CONNECT,
        ("const char *name", "unsigned long name_len"),
        "connect to a service; the kernel maps a fresh shared buffer into both "
        "sides at the same address and gives the connection an unforgeable badge",
        "RAX: connection slot (CALL) or -errno; RDI: buffer address; RSI: its size; "
        "RDX: the connection's gate, or 0 to call with IPC_CALL",
    ),
    SyscallSpec(
        Sys.IPC_CALL,
        ("long conn_slot", "long mr0", "long mr1", "long mr2", "long mr3"),
        "send 4 message registers and block for the reply",
        "RAX: 0 or -errno; RSI, RDX, R10, R8: reply mr0..mr3",
    ),
    SyscallSpec(
        Sys.IPC_REPLY_WAIT,
        ("long service_slot", "long mr0", "long mr1", "long mr2", "long mr3"),
        "reply to the last caller (if any), then block for the next call",
        "RAX: 0 or -errno; RDI: badge; RSI: shared buffer address; RDX, R10, R8, R9: mr0..mr3",
    ),
    SyscallSpec(
        Sys.PORT_IO,
        ("unsigned long port", "unsigned long value", "unsigned long write"),
        "read (write=0) or write one byte of an I/O port the cap group was granted; "
        "what the kernel's checked inb/outb routines call",
        "RAX: the byte read (or 0 for a write), or -EPERM",
    ),
    SyscallSpec(
        Sys.CHANNEL_CREATE,
        (),
        "create a channel: two endpoints, each with READ|WRITE|WAIT|GRANT",
        "RAX: slot of one endpoint or -errno; RDI: slot of the other",
    ),
    SyscallSpec(
        Sys.CHANNEL_WRITE,
        (
            "long slot",
            "const void *bytes",
            "unsigned long num_bytes",
            "const long *handles",
            "unsigned long num_handles",
        ),
        "queue a message on the peer endpoint; the handles (slots with GRANT) leave the "
        "caller's table with it. -EPIPE if the peer is closed, nothing sent",
    ),
    SyscallSpec(
        Sys.CHANNEL_READ,
        (
            "long slot",
            "void *bytes",
            "unsigned long bytes_cap",
            "long *handles",
            "unsigned long handles_cap",
        ),
        "take the oldest message without blocking; its handles get new slots in the "
        "caller's table, written to handles[]",
        "RAX: bytes read, or -EAGAIN (empty), -EPIPE (empty, peer closed), -EMSGSIZE (too "
        "big for the buffers; it stays queued); RDI: number of handles",
    ),
    SyscallSpec(
        Sys.CHANNEL_CALL,
        ("long slot", "struct ub_channel_call_args *args"),
        "write args->wr_* with a fresh transaction id in its first 4 bytes, then block "
        "until the reply carrying that id arrives, read into args->rd_*",
        "RAX: reply bytes or -errno (-EPIPE: peer closed); RDI: reply handles",
    ),
    SyscallSpec(
        Sys.OBJECT_WAIT,
        ("long slot", "unsigned long signals"),
        "block until the endpoint asserts one of the UB_SIGNAL_* bits",
        "RAX: the signals asserted or -errno",
    ),
    SyscallSpec(
        Sys.PORT_CREATE, (), "create a port", "RAX: slot (READ|WRITE|WAIT|GRANT) or -errno"
    ),
    SyscallSpec(
        Sys.OBJECT_WAIT_ASYNC,
        ("long slot", "long port_slot", "unsigned long key", "unsigned long signals"),
        "once the endpoint asserts one of signals, queue a packet (key, signals) on the port",
    ),
    SyscallSpec(
        Sys.PORT_WAIT,
        ("long port_slot",),
        "block until the port holds a packet; take it",
        "RAX: 0 or -errno; RDI: the packet's key; RSI: its signals",
    ),
)

BANNER = "/* Generated by underbridge.abi.syscalls.render_header(); do not edit. */"


def render_header() -> str:
    """The C header that gives guests the syscall numbers, error codes and flags."""
    lines = [
        BANNER,
        "#ifndef UB_SYSCALL_H",
        "#define UB_SYSCALL_H",
        "",
        "/* Linux-ABI guests (musl) own the Linux numbers; ours sit above them. */",
        "#ifdef UB_LINUX_ABI",
        f"#define UB_SYS_BASE {LINUX_NATIVE_BASE:#x}",
        "#else",
        "#define UB_SYS_BASE 0",
        "#endif",
        "",
    ]
    for spec in SYSCALLS:
        lines.append(
            f"/* {spec.number.name.lower()}({', '.join(spec.args)}): {spec.doc}. {spec.results} */"
        )
        lines.append(f"#define UB_SYS_{spec.number.name} (UB_SYS_BASE + {int(spec.number)})")
    for title, enum, prefix in (
        ("errors", Errno, "UB_"),
        ("rights", Rights, "UB_RIGHT_"),
        ("object types", ObjType, "UB_OBJ_"),
        ("PMO_MAP protection", Prot, "UB_PROT_"),
        ("channel signals", Signal, "UB_SIGNAL_"),
        ("limits", Limit, "UB_"),
    ):
        lines += ["", f"/* {title} */"]
        for member in enum:  # type: ignore[attr-defined]
            lines.append(f"#define {prefix}{member.name} {int(member)}")
    lines += [
        "",
        "/* WAIT: how a cap group ended */",
        "#define UB_EXIT_NORMAL 0",
        "#define UB_EXIT_FAULT 1",
        "struct ub_exit_info { long how; long value; /* status, or fault vector */ };",
        "",
        "/* CHANNEL_CALL: what to write and where the reply goes (Zircon's layout) */",
        "struct ub_channel_call_args {",
        "    const void *wr_bytes; const long *wr_handles;",
        "    unsigned long wr_num_bytes, wr_num_handles;",
        "    void *rd_bytes; long *rd_handles;",
        "    unsigned long rd_num_bytes, rd_num_handles;",
        "};",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)
