"""THE table of red-team attacks: one AttackSpec per row of `underbridge redteam`.

To add a row (say, a privileged instruction in ring 0), write guest/attacks/<name>.c and
append an AttackSpec to ATTACKS. What a row's fields mean is in spec.py; how a row is
run and judged, in stage.py and runner.py.
"""

from __future__ import annotations

from underbridge.machine.oracle import Access, Violation
from underbridge.redteam.design_rows import CLOSE_ROWS, DESIGN_ROWS, FASTPATH_ROWS
from underbridge.redteam.migration_rows import MIGRATION_ROWS
from underbridge.redteam.spec import AttackSpec, Expect, Partner, absent, pkey_fault

EFAULT = "-14"
EPIPE = "-32"
EINVAL = "-22"
ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec(
        "read-server",
        "in-kernel server reads echo's stack (echo's saved RSP)",
        "read_server",
        ("{echo_stack}",),
        pkey_fault(Access.READ, "echo_stack", "#PF protection key (AD), attacker ends"),
    ),
    AttackSpec(
        "write-server",
        "in-kernel server writes echo's stack",
        "write_server",
        ("{echo_stack}",),
        pkey_fault(Access.WRITE, "echo_stack", "#PF protection key (AD), attacker ends"),
    ),
    AttackSpec(
        "read-kernel",
        "in-kernel server reads kernel data (KERNEL_DATA, the GDT, key 0)",
        "read_kernel",
        ("{kernel_data}",),
        pkey_fault(Access.READ, "kernel_data", "#PF protection key (AD), attacker ends"),
    ),
    AttackSpec(
        "write-kernel",
        "in-kernel server writes kernel data (the GDT, key 0)",
        "write_kernel",
        ("{kernel_data}",),
        pkey_fault(Access.WRITE, "kernel_data", "#PF protection key (AD), attacker ends"),
    ),
    AttackSpec(
        "forge-thread-id",
        "in-kernel server overwrites the current-thread word its gates trust, to pose "
        "as another thread",
        "forge_thread_id",
        ("{current_thread}",),
        Expect(
            "#PF write to a read-only page (the word is readable, not writable), attacker ends",
            "#PF",
            Violation.WRITE_READ_ONLY,
            Access.WRITE,
            address="current_thread",
        ),
    ),
    AttackSpec(
        "read-page-tables",
        "read the kernel page table: its root's physical address used as a virtual "
        "address (identity guess)",
        "page_tables",
        ("read", "{pt_root}"),
        absent(Access.READ, "pt_root", "#PF not present (page tables are in no address space)"),
    ),
    AttackSpec(
        "write-page-tables",
        "write the kernel page table: store root|P|RW|U (a self-map) at the root's "
        "physical address used as a virtual address",
        "page_tables",
        ("write", "{pt_root}", "{pt_self_map}"),
        absent(Access.WRITE, "pt_root", "#PF not present (page tables are in no address space)"),
    ),
    AttackSpec(
        "write-gate",
        "in-kernel server overwrites a gate's caller check with NOPs",
        "write_gate",
        ("{gate}",),
        pkey_fault(Access.WRITE, "gate", "#PF protection key (AD, key 0), attacker ends"),
    ),
    AttackSpec(
        "call-foreign-gate",
        "call another client's gate to echo (gate ABI) without holding the connection",
        "call_foreign_gate",
        ("{gate}",),
        Expect("gate returns -EPERM (-1), attacker runs on", reports=("gate call = -1",)),
    ),
    AttackSpec(
        "gate-wrpkru-jump",
        "jump onto the gate's first wrpkru with EAX = 0 (all keys open), ECX = EDX = 0",
        "gate_wrpkru_jump",
        ("{gate_wrpkru}",),
        Expect(
            "#UD at the gate's ud2 (post-wrpkru check), PKRU 0, attacker ends",
            "#UD",
            rip="gate_abort",
            pkru="all_keys_open",
        ),
    ),
    AttackSpec(
        "gate-skip-auth",
        "jump past the gate's caller check onto its own switch (mov eax, <echo's pkru>; wrpkru)",
        "gate_skip_auth",
        ("{gate_switch}",),
        Expect(
            "#UD at the gate's ud2 (no call token), echo's PKRU, attacker ends",
            "#UD",
            rip="gate_abort",
            pkru="echo_pkru",
        ),
    ),
    AttackSpec(
        "deputy",
        "confused deputy: WRITE of echo's stack and of gate code; WAIT's exit record "
        "into echo's stack and into the gate's control page",
        "deputy",
        ("{echo_stack}", "{gate}", "{gate_control}"),
        Expect(
            "-EFAULT (-14) for each foreign buffer, attacker runs on",
            reports=(
                f"write(echo's stack) = {EFAULT}",
                f"write(gate code) = {EFAULT}",
                "wait(own memory) = 0",
                f"wait(into echo's stack) = {EFAULT}",
                f"wait(into the control page) = {EFAULT}",
            ),
        ),
    ),
    AttackSpec(
        "stale-buffer",
        "connect to echo, use the shared buffer, CAP_DELETE the connection, write the buffer again",
        "stale_buffer",
        (),
        Expect(
            "#PF not present on the second write, attacker ends",
            "#PF",
            Violation.NOT_PRESENT,
            Access.WRITE,
        ),
    ),
    AttackSpec(
        "boot-stub-wrpkru",
        "jump to where the boot stubs' wrpkru was (KERNEL_STUBS + 5) with EAX = 0",
        "kernel_code_jump",
        ("{boot_stub_wrpkru}", "0x0"),
        absent(
            Access.FETCH,
            "boot_stub_wrpkru",
            "#PF fetch not present (boot-only code is unmapped), attacker ends",
        ),
    ),
    AttackSpec(
        "gate-return-page",
        "jump into the page a kernel-called gate returns to (KERNEL_RETURN)",
        "kernel_code_jump",
        ("{kernel_return}", "0x0"),
        Expect(
            "#UD there (the page holds only ud2), attacker ends, kernel goes on",
            "#UD",
            rip="kernel_return",
        ),
    ),
    AttackSpec(
        "app-read-server",
        "application (ring 3, own page table) reads echo's stack",
        "app_read_server",
        ("{echo_stack}",),
        absent(Access.READ, "echo_stack", "#PF not present in ring 3, attacker ends"),
        in_kernel=False,
    ),
    # -- the isolation breaks of issue 10: each row fails until the kernel stops it --
    AttackSpec(
        "pkru-refresh",
        "victim server S calls attacker R with its secret's address; R's handler spins "
        "on S's thread while R's second thread connects to S (a PKRU refresh of S's "
        "threads), then reads the secret",
        "pkru_refresh",
        (),
        pkey_fault(
            Access.READ,
            "partner_secret",
            "#PF protection key (AD) reading S's secret in R's handler; R "
            "ends, S's call returns -EPIPE (-32), S lives on",
        ),
        partner=Partner(
            "secret_server", before=True, lines=(f"call = {EPIPE}",), symbols=("secret",)
        ),
    ),
    AttackSpec(
        "forged-return",
        "attacker R keeps victim client V's call in its handler; R's second thread "
        "jumps into the return half of V's gate (after its call of the handler) with "
        "RSP at a forged reply",
        "forged_return",
        (),
        Expect(
            "#UD at V's gate's ud2 (its return check), V's PKRU; R ends, V's call "
            "returns -EPIPE (-32), V sees no forged reply and lives on",
            "#UD",
            rip="partner_gate_abort",
            pkru="partner_pkru",
        ),
        partner=Partner(
            "victim_client", ("call",), lines=(f"call = {EPIPE}", f"next call = {EPIPE}")
        ),
    ),
    AttackSpec(
        "server-fault",
        "attacker R's handler reads echo's stack while victim client V's call runs it "
        "(on V's thread)",
        "faulty_server",
        ("{echo_stack}",),
        pkey_fault(
            Access.READ,
            "echo_stack",
            "#PF protection key (AD) in R's handler; R ends, not V: V's call "
            "returns -EPIPE (-32), V lives on",
        ),
        partner=Partner(
            "victim_client", ("call",), lines=(f"call = {EPIPE}", f"next call = {EPIPE}")
        ),
    ),
    AttackSpec(
        "unmap-buffer",
        "attacker R PMO_UNMAPs the shared buffer of victim client V's connection "
        "(mapped on the kernel page table V runs on)",
        "unmap_buffer",
        (),
        Expect(
            "-EPERM (-1): the buffer's mappings are the kernel's; V writes its "
            "buffer and R reads it back",
            reports=("unmap = -1",),
        ),
        partner=Partner("victim_client", ("buffer",), lines=("buffer ok",)),
    ),
    # -- PKU Pitfalls (Connor et al., USENIX Security 2020), adapted to this kernel --
    *(
        AttackSpec(
            f"deputy-{call}",
            f"confused deputy: {name} with its name pointer in echo's stack and in the "
            f"gate's control page" + (", its argument block in each" if extra else ""),
            "deputy_names",
            (call, "{echo_stack}", "{gate_control}"),
            Expect(
                "-EFAULT (-14) for each foreign pointer, attacker runs on",
                reports=(
                    f"{call}(own memory) ok",
                    f"{call}(name in echo's stack) = {EFAULT}",
                    f"{call}(name in the control page) = {EFAULT}",
                    *(
                        (
                            f"{call}(arguments in echo's stack) = {EFAULT}",
                            f"{call}(arguments in the control page) = {EFAULT}",
                        )
                        if extra
                        else ()
                    ),
                ),
            ),
        )
        for call, name, extra in (
            ("register", "IPC_REGISTER", False),
            ("connect", "IPC_CONNECT", False),
            ("spawn", "SPAWN", True),
        )
    ),
    AttackSpec(
        "thread-into-gate",
        "THREAD_CREATE with the entry on a gate's switch, past its caller check",
        "thread_entry",
        ("{gate_switch}", "0x0"),
        Expect(
            "#UD at the gate's ud2 (no call token), echo's PKRU, attacker ends",
            "#UD",
            rip="gate_abort",
            pkru="echo_pkru",
        ),
    ),
    AttackSpec(
        "thread-into-echo",
        "THREAD_CREATE with the entry at echo's entry point and the stack in echo's memory",
        "thread_entry",
        ("{echo_entry}", "{echo_thread_stack}"),
        pkey_fault(
            Access.READ,
            "echo_thread_rsp",
            "#PF protection key (AD) at the first read of echo's stack, attacker ends",
        ),
    ),
    AttackSpec(
        "pmo-foreign",
        "PMO_MAP a writable PMO over echo's stack, a gate, its control page, its own "
        "region's kernel half; PMO_UNMAP echo's stack and a gate",
        "pmo_foreign",
        ("{echo_stack}", "{gate}", "{gate_control}", "{attacker_window}"),
        Expect(
            "-EINVAL (-22) for every page outside its own window, attacker runs on",
            reports=(
                "map(own window) = 0",
                "unmap(own window) = 0",
                f"map(echo's stack) = {EINVAL}",
                f"map(gate) = {EINVAL}",
                f"map(control page) = {EINVAL}",
                f"map(own region's upper half) = {EINVAL}",
                f"unmap(echo's stack) = {EINVAL}",
                f"unmap(gate) = {EINVAL}",
            ),
        ),
    ),
    AttackSpec(
        "code-alias",
        "write wrpkru; ret into a PMO mapped writable, then call it (no PMO is executable)",
        "code_alias",
        ("{attacker_window}",),
        Expect(
            "#PF fetch from a no-execute page, attacker ends",
            "#PF",
            Violation.FETCH_NX,
            Access.FETCH,
            address="attacker_window",
        ),
    ),
    AttackSpec(
        "code-write",
        "write wrpkru over its own code after the load-time scan",
        "code_write",
        (),
        Expect(
            "#PF write to a read-only page (its code), attacker ends",
            "#PF",
            Violation.WRITE_READ_ONLY,
            Access.WRITE,
            address="attacker_patch_site",
        ),
        symbols=("patch_site",),
    ),
    # A wrpkru split across two executable pages, neither of which holds it alone.
    *(
        AttackSpec(
            f"pkru-split-{variant}",
            "in-kernel server's code holds a wrpkru split across a page boundary "
            f"(0f 01 | ef), {'as instructions' if variant == 'plain' else 'in an immediate'}",
            "pkru_split",
            (variant,),
            Expect(
                "refused at load: the scanner searches adjacent executable pages as one",
                refused_at_load=True,
                finding=("wrpkru", variant == "plain"),
            ),
        )
        for variant in ("plain", "hidden")
    ),
)


# Privilege deprivation: each class plainly and hidden inside an immediate, reached by a
# computed jump (guest/attacks/privileged.c). The first ten are trapped by the secure
# monitor at run time; wrpkru and xrstor, which no hypervisor can trap, must be refused
# at load by the scanner.
TRAPPED_CLASSES = (
    ("cr4", "mov cr4, rax"),
    ("cr0", "mov cr0, rax"),
    ("cr3", "mov cr3, rax"),
    ("wrmsr", "wrmsr"),
    ("lgdt", "lgdt"),
    ("lidt", "lidt"),
    ("hlt", "hlt"),
    ("cli", "cli"),
    ("invlpg", "invlpg"),
    ("out", "out dx, al"),
)
REFUSED_CLASSES = ("wrpkru", "xrstor")
_HOW = {
    "plain": "as an ordinary instruction",
    "hidden": "hidden in a movabs immediate, reached by a computed jump into it",
    "span": "straddling two instructions, reached by a computed jump into the first",
}
SPANNING = ("cr4", "wrmsr")  # also straddling two instructions (privileged.c "span")
# The loader rewrites an aligned `out dx, al` into a call of the kernel's checked routine
# (bridge/iocall.py), which refuses the ungranted port: the attacker ends at its ud2.
REWRITTEN_BY_THE_LOADER = {
    ("out", "plain"): Expect(
        "#UD in the checked routine: the loader rewrote out into a call and the port is not "
        "granted; attacker ends",
        "#UD",
        rip="io_denied",
    )
}
_TRAPPED_ROWS = [
    (name, insn, variant) for name, insn in TRAPPED_CLASSES for variant in ("plain", "hidden")
] + [(name, insn, "span") for name, insn in TRAPPED_CLASSES if name in SPANNING]
ATTACKS += tuple(
    AttackSpec(
        f"priv-{name}-{variant}",
        f"in-kernel server executes {insn} {_HOW[variant]}",
        "privileged",
        (name, variant),
        REWRITTEN_BY_THE_LOADER.get((name, variant))
        or Expect(
            f"VM exit at {insn}, denied by the secure monitor; attacker ends",
            "VMEXIT",
            instruction=insn,
        ),
    )
    for name, insn, variant in _TRAPPED_ROWS
)
ATTACKS += tuple(
    AttackSpec(
        f"priv-{name}-{variant}",
        f"in-kernel server's code holds {name} {_HOW[variant]}",
        "pkru_writer",
        (name, variant),
        Expect(
            "refused at load: the scanner finds it at any byte offset",
            refused_at_load=True,
            finding=(name, variant == "plain"),
        ),
    )
    for name in REFUSED_CLASSES
    for variant in ("plain", "hidden")
)

ATTACKS += DESIGN_ROWS + FASTPATH_ROWS  # design_rows.py

# Denial of service on the protection keys (issue 14): an application's connections take
# no key, so hoarding them leaves keys for everyone else (kernel/ipc/gate_table.py).
ATTACKS += (
    AttackSpec(
        "key-hoarding",
        "application opens 40 connections to in-kernel echo and holds them, to use up the "
        "15 protection keys; meanwhile an in-kernel server V connects to echo",
        "key_hoard",
        (),
        Expect(
            "no key is taken: all 40 connections work, and V connects and calls echo",
            reports=("40 connections to echo held", "the partner connected meanwhile"),
        ),
        in_kernel=False,
        partner=Partner("key_witness", before=True, lines=("echo answered",)),
    ),
)
ATTACKS += MIGRATION_ROWS  # migration_rows.py
ATTACKS += CLOSE_ROWS  # design_rows.py: a close in the middle of a call
