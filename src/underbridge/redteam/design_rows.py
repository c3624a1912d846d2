"""Red-team rows for the designs other than UnderBridge, and for every design's IPC
fast path: appended to THE table (rows.py), each on a stage under its own design.
"""

from __future__ import annotations

from underbridge.machine.oracle import Access, Violation
from underbridge.redteam.spec import AttackSpec, Expect, Partner, pkey_fault

# The other designs' own mechanisms, each on a stage under that design (stage.py):
# SkyBridge's calling key, return check and stray-vmfunc scan; pku-shared's scan of an
# application before it joins the shared view; pku-user's keys between servers that
# share one process. The attackers are applications where the design has no placed
# servers (skybridge), else placed like a server (in ring 3 under both pku designs).
EPERM = "-1"
DESIGN_ROWS: tuple[AttackSpec, ...] = (
    AttackSpec(
        "sky-no-key",
        "skybridge: call onto the trampoline's vmfunc with a guessed key, skipping its call half",
        "sky_nokey",
        (),
        Expect(
            "-EPERM (-1): the server half finds no calling key and switches straight back, "
            "echo never runs (its buffer still reads abc); a genuine call then works",
            reports=(f"nokey = {EPERM} buffer = abc", "call = 0 mr1 = 8"),
        ),
        in_kernel=False,
        mode="skybridge",
    ),
    AttackSpec(
        "sky-forged-key",
        "skybridge: a server returns to its caller with a reply of its own and a forged key, "
        "jumping onto the return vmfunc",
        "sky_caller",
        ("forger",),
        Expect(
            "the caller's call returns -EPERM (-1) with no reply (not 0x666); the server lives",
            reports=(f"call = {EPERM} mr0 = 0",),
        ),
        in_kernel=False,
        partner=Partner("sky_forger", before=True),
        mode="skybridge",
    ),
    AttackSpec(
        "sky-stray-vmfunc",
        "skybridge: an application with a vmfunc hidden in an immediate connects to echo",
        "sky_stray",
        (),
        Expect(
            "the scan finds the vmfunc: connect refused with -EPERM (-1), no trampoline mapped",
            reports=(f"connect = {EPERM} gate = 0",),
            stray_vmfunc=True,
        ),
        in_kernel=False,
        mode="skybridge",
    ),
    AttackSpec(
        "pku-shared-wrpkru",
        "pku-shared: an application opens every key (wrpkru, PKRU 0), connects to echo, "
        "reads echo's stack",
        "pku_shared_wrpkru",
        ("{echo_stack}",),
        Expect(
            "connect refused with -EPERM (-1: its code holds a wrpkru); #PF not present on "
            "the read (nothing of a server is mapped before it joins), attacker ends",
            "#PF",
            Violation.NOT_PRESENT,
            Access.READ,
            address="echo_stack",
            reports=(f"connect = {EPERM}",),
        ),
        in_kernel=False,
        mode="pku-shared",
    ),
    AttackSpec(
        "pku-user-read-server",
        "pku-user: a server reads echo's stack in the process they share",
        "read_server",
        ("{echo_stack}",),
        pkey_fault(Access.READ, "echo_stack", "#PF protection key (AD) in ring 3, attacker ends"),
        mode="pku-user",
    ),
)


# Every design's IPC fast path (kernel/ipc/*.py `fastpath`) checks the slot, the cap's
# type and its CALL right before it commits; a check it skipped would let an
# application call through a cap it does not hold. Under underbridge (echo in kernel
# space: the kernel's gate call) and under sel4 (echo in user space: a direct switch).
EBADCAP = "-77"
_FASTPATH_EXPECT = Expect(
    "-EPERM (-1) without the CALL right, -EBADCAP (-77) for a deleted slot and for slot "
    "-1; echo serves none of them; a genuine call then works",
    reports=(f"weak = {EPERM}", f"deleted = {EBADCAP}", f"wild = {EBADCAP}", "call = 0 mr1 = 8"),
)
FASTPATH_ROWS: tuple[AttackSpec, ...] = tuple(
    AttackSpec(
        f"fastpath-caps{suffix}",
        f"{mode}: an application calls through a cap without CALL, a deleted slot, slot -1",
        "ipc_fastpath_caps",
        (),
        _FASTPATH_EXPECT,
        in_kernel=False,
        mode=mode,
    )
    for mode, suffix in (("underbridge", ""), ("sel4", "-sel4"))
)


# A client closes its connection while a server in user space is in the middle of its
# call (close_mid_call.c, the victim slow_buffer.c): a naive kernel unmaps the buffer
# from the server too, whose handler faults on it, and the server dies (README, fault
# isolation). Under sel4 the reply reaches the caller still blocked in its call; under
# zircon the close closes the channel, and the call fails with -EPIPE at once.
_CLOSE_CALL = {"sel4": "call = 0 mr0 = 6d61726b", "zircon": "call = -32 mr0 = 1"}
CLOSE_ROWS: tuple[AttackSpec, ...] = tuple(
    AttackSpec(
        f"close-mid-call{suffix}",
        f"{mode}: an application's second thread closes its connection while the server's "
        "handler is still working on the shared buffer",
        "close_mid_call",
        (),
        Expect(
            "the buffer leaves the application at once and the server when its call is over: "
            "the server lives and serves a new connection (again = 0 mr0 = 7)",
            reports=("close = 0", _CLOSE_CALL[mode], "again = 0 mr0 = 7"),
        ),
        in_kernel=False,
        partner=Partner("slow_buffer", before=True),
        mode=mode,
    )
    for mode, suffix in (("sel4", ""), ("zircon", "-zircon"))
)
