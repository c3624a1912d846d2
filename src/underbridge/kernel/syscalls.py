"""Transitional: the syscall table moved to underbridge.abi.syscalls (the guest ABI layer).

Only kernel.py, dispatch.py, handlers/ipc.py and ipc/* still import it from here, until
the IPC fast-path work in those files lands; every other module imports
underbridge.abi.syscalls. Delete this module once they do.
"""

from underbridge.abi.syscalls import (
    LINUX_NATIVE_BASE,
    SYSCALLS,
    Errno,
    Limit,
    ObjType,
    Prot,
    Rights,
    Sys,
)

__all__ = ["LINUX_NATIVE_BASE", "SYSCALLS", "Errno", "Limit", "ObjType", "Prot", "Rights", "Sys"]
