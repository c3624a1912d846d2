"""Which instructions only ring 0 may execute: what the secure monitor traps in guests.

One list, used by the secure monitor (machine/monitor.py), which traps these in ring-0
guest code as VM exits, and by the binary scanner (bridge/scan.py), which reports the
aligned ones. `wrpkru` and the XRSTOR family are not here: they work in any ring and no
hypervisor can trap them, which is why servers are scanned for them at every byte.
"""

from __future__ import annotations

import re

#: Capstone mnemonics of privileged (or, like vmcall/vmfunc, hypervisor-facing) instructions.
PRIVILEGED: frozenset[str] = frozenset(
    {
        "wrmsr",
        "rdmsr",
        "lgdt",
        "lidt",
        "lldt",
        "ltr",
        "lmsw",
        "hlt",
        "cli",
        "sti",
        "invlpg",
        "invpcid",
        "in",
        "out",
        "insb",
        "insw",
        "insd",
        "outsb",
        "outsw",
        "outsd",
        "swapgs",
        "sysret",
        "sysretq",
        "iret",
        "iretd",
        "iretq",
        "wbinvd",
        "invd",
        "clts",
        "xsetbv",
        "vmfunc",
        "vmcall",
    }
)
_CONTROL_OR_DEBUG = re.compile(r"\b([cd]r\d+)\b")


def privileged_name(mnemonic: str, op_str: str) -> str | None:
    """'wrmsr', 'mov-cr4', ... for a privileged instruction; None for any other."""
    mnemonic = mnemonic.split()[-1]  # "rep insb" -> "insb"
    if mnemonic == "mov":
        register = _CONTROL_OR_DEBUG.search(op_str)
        return f"mov-{register.group(1)}" if register else None
    return mnemonic if mnemonic in PRIVILEGED else None
