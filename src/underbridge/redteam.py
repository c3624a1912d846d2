"""`underbridge redteam`: attacks on the UnderBridge placement, each checked against the hardware.

Every row is one attack program (guest/attacks/<program>.c, its header comment says what
it tries and what should happen) run on a fresh machine under `Kernel(ipc="underbridge")`
with the same stage:

  1. echo in kernel space, in its own execution domain (ECHO_BASE);
  2. a legitimate in-kernel client of echo (guest/attacks/legit_client.c) that makes one
     checked call and then blocks with its connection open: the attacks aim at its gate,
     its control page and at echo;
  3. the attacker: an in-kernel server linked at its own 16 MiB region (the row's index
     picks it), or an application in ring 3 for rows that say so;
  4. the victim check: the pingpong application makes VICTIM_ROUNDS calls to echo and
     must exit 0 with "pingpong: 20 rounds ok", and echo and the legitimate client must
     still be alive.

Targets are read from the kernel and the gate's machine code, never guessed: echo's
saved stack pointer, KERNEL_DATA, the kernel page table's root, the gate's address, its
first wrpkru, its `mov eax, <server pkru>` and its ud2 (capstone), its control page.
An argv word "{name}" is replaced by the target `name` in hex.

A row PASSES only if the observed outcome is the expected one (the exception, and for
a page fault its reason, access and address; for a gate, the ud2 and the PKRU it held;
for an attacker that should survive, exactly the "observed:" lines it must print), the
victim check passes, and the attacker printed no "LEAKED" or "broken" line.

A row may add a partner: a second in-kernel program (guest/attacks/<program>.c, in its
own region PARTNER_BASE) spawned just before or after the attacker, its victim (or its
accomplice). Attacker and partner find each other by service name (attack.h). Once the
partner has connected as a client, its gate is disassembled like the legitimate one
(targets partner_gate, partner_gate_abort, partner_gate_return: the instruction after the
gate's call of the handler) and its PKRU is noted (partner_pkru). Globals a program
exports are targets too: attacker_<name>, partner_<name> (the spec's `symbols`). Such a
row PASSES only if, besides the above, the partner is still alive once the attack is
over and printed exactly the spec's "victim: " lines, and no LEAKED or broken line.

To add a row (say, a privileged instruction in ring 0), write guest/attacks/<name>.c and
append an AttackSpec to ATTACKS.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from underbridge.bench.ipc import ECHO_BASE, PINGPONG_BASE
from underbridge.bridge.gate import wrpkru_offsets
from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.scan import scan_elf
from underbridge.elf.image import parse_elf
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program, guest_root, symbol
from underbridge.kernel.ipc.underbridge import CURRENT_THREAD_PAGE, KERNEL_RETURN, REGION_SIZE
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import CapGroup, GroupState
from underbridge.kernel.objects.thread import ThreadState
from underbridge.machine.context import Reg
from underbridge.machine.cpu import KERNEL_DATA, KERNEL_STUBS, Machine
from underbridge.machine.oracle import Access, Violation

if TYPE_CHECKING:
    from underbridge.kernel.ipc.underbridge import GateState, UnderbridgeIpc

LEGIT_BASE = PINGPONG_BASE  # the legitimate in-kernel client's region
ATTACK_BASE = 0x0300_0000  # row i's in-kernel attacker is linked at ATTACK_BASE + i * 16 MiB
PARTNER_BASE = 0x5F00_0000  # a row's partner: the last region below the gates (LOW_LIMIT)
APP_BASE = 0x40_0000  # applications (ring 3, own page table)
VICTIM_ROUNDS = 20
MAX_EVENTS = 20_000  # kernel events one program may take before it counts as hung
PTE_P_RW_U = 0x7  # present, writable, user: the flags of a forged page-table entry
BAD_WORDS = ("LEAKED", "broken")
PASS, FAIL = "PASS", "FAIL"


class RedTeamError(RuntimeError):
    """The stage could not be set up (echo or the legitimate client did not come up)."""


@dataclass(frozen=True, slots=True)
class Expect:
    """The outcome a row requires. exception None: the attacker must survive, exit 0
    and print exactly `reports` as its "observed:" lines. Target names (address, rip,
    pkru) are resolved against the stage's targets."""

    text: str  # the table's "expected" column
    exception: str | None = None  # "#PF", "#UD", "#GP", ...
    reason: Violation | None = None
    access: Access | None = None
    address: str | None = None  # the faulting address must be this target
    rip: str | None = None  # the faulting instruction must be at this target
    pkru: str | None = None  # the PKRU at the fault must be this target
    reports: tuple[str, ...] = ()
    instruction: str | None = None  # the faulting instruction must start with this
    refused_at_load: bool = False  # the kernel must refuse to place the attacker
    finding: tuple[str, bool] | None = None  # and the scan must hold (class, aligned)


@dataclass(frozen=True, slots=True)
class Partner:
    """A second in-kernel program on a row's stage: the attack's victim or accomplice."""

    program: str  # guest/attacks/<program>.c, linked at PARTNER_BASE
    args: tuple[str, ...] = ()  # like AttackSpec.args (stage targets only)
    before: bool = False  # spawned before the attacker (else just after it)
    lines: tuple[str, ...] = ()  # exactly the "victim: " lines it must print
    symbols: tuple[str, ...] = ()  # its globals, published as targets partner_<name>


@dataclass(frozen=True, slots=True)
class AttackSpec:
    id: str
    attack: str  # the table's "attack" column
    program: str  # guest/attacks/<program>.c
    args: tuple[str, ...]
    expect: Expect
    in_kernel: bool = True  # False: an application in ring 3
    partner: Partner | None = None
    symbols: tuple[str, ...] = ()  # the attacker's globals, as targets attacker_<name>


def _pkey_fault(access: Access, target: str, text: str) -> Expect:
    return Expect(text, "#PF", Violation.PKEY_ACCESS_DISABLED, access, address=target)


def _absent(access: Access, target: str, text: str) -> Expect:
    return Expect(text, "#PF", Violation.NOT_PRESENT, access, address=target)


EFAULT = "-14"
EPIPE = "-32"
EINVAL = "-22"
ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec("read-server", "in-kernel server reads echo's stack (echo's saved RSP)",
               "read_server", ("{echo_stack}",),
               _pkey_fault(Access.READ, "echo_stack", "#PF protection key (AD), attacker ends")),
    AttackSpec("write-server", "in-kernel server writes echo's stack",
               "write_server", ("{echo_stack}",),
               _pkey_fault(Access.WRITE, "echo_stack", "#PF protection key (AD), attacker ends")),
    AttackSpec("read-kernel", "in-kernel server reads kernel data (KERNEL_DATA, the GDT, key 0)",
               "read_kernel", ("{kernel_data}",),
               _pkey_fault(Access.READ, "kernel_data", "#PF protection key (AD), attacker ends")),
    AttackSpec("write-kernel", "in-kernel server writes kernel data (the GDT, key 0)",
               "write_kernel", ("{kernel_data}",),
               _pkey_fault(Access.WRITE, "kernel_data", "#PF protection key (AD), attacker ends")),
    AttackSpec("forge-thread-id",
               "in-kernel server overwrites the current-thread word its gates trust, to pose "
               "as another thread", "forge_thread_id", ("{current_thread}",),
               Expect("#PF write to a read-only page (the word is readable, not writable), "
                      "attacker ends", "#PF", Violation.WRITE_READ_ONLY, Access.WRITE,
                      address="current_thread")),
    AttackSpec("read-page-tables",
               "read the kernel page table: its root's physical address used as a virtual "
               "address (identity guess)", "page_tables", ("read", "{pt_root}"),
               _absent(Access.READ, "pt_root", "#PF not present (page tables are in no "
                                                "address space)")),
    AttackSpec("write-page-tables",
               "write the kernel page table: store root|P|RW|U (a self-map) at the root's "
               "physical address used as a virtual address", "page_tables",
               ("write", "{pt_root}", "{pt_self_map}"),
               _absent(Access.WRITE, "pt_root", "#PF not present (page tables are in no "
                                                 "address space)")),
    AttackSpec("write-gate", "in-kernel server overwrites a gate's caller check with NOPs",
               "write_gate", ("{gate}",),
               _pkey_fault(Access.WRITE, "gate", "#PF protection key (AD, key 0), attacker "
                                                 "ends")),
    AttackSpec("call-foreign-gate",
               "call another client's gate to echo (gate ABI) without holding the connection",
               "call_foreign_gate", ("{gate}",),
               Expect("gate returns -EPERM (-1), attacker runs on",
                      reports=("gate call = -1",))),
    AttackSpec("gate-wrpkru-jump",
               "jump onto the gate's first wrpkru with EAX = 0 (all keys open), ECX = EDX = 0",
               "gate_wrpkru_jump", ("{gate_wrpkru}",),
               Expect("#UD at the gate's ud2 (post-wrpkru check), PKRU 0, attacker ends",
                      "#UD", rip="gate_abort", pkru="all_keys_open")),
    AttackSpec("gate-skip-auth",
               "jump past the gate's caller check onto its own switch (mov eax, <echo's "
               "pkru>; wrpkru)", "gate_skip_auth", ("{gate_switch}",),
               Expect("#UD at the gate's ud2 (no call token), echo's PKRU, attacker ends",
                      "#UD", rip="gate_abort", pkru="echo_pkru")),
    AttackSpec("deputy",
               "confused deputy: WRITE of echo's stack and of gate code; WAIT's exit record "
               "into echo's stack and into the gate's control page", "deputy",
               ("{echo_stack}", "{gate}", "{gate_control}"),
               Expect("-EFAULT (-14) for each foreign buffer, attacker runs on",
                      reports=(f"write(echo's stack) = {EFAULT}", f"write(gate code) = {EFAULT}",
                               "wait(own memory) = 0", f"wait(into echo's stack) = {EFAULT}",
                               f"wait(into the control page) = {EFAULT}"))),
    AttackSpec("stale-buffer",
               "connect to echo, use the shared buffer, CAP_DELETE the connection, write the "
               "buffer again", "stale_buffer", (),
               Expect("#PF not present on the second write, attacker ends", "#PF",
                      Violation.NOT_PRESENT, Access.WRITE)),
    AttackSpec("boot-stub-wrpkru",
               "jump to where the boot stubs' wrpkru was (KERNEL_STUBS + 5) with EAX = 0",
               "kernel_code_jump", ("{boot_stub_wrpkru}", "0x0"),
               _absent(Access.FETCH, "boot_stub_wrpkru",
                       "#PF fetch not present (boot-only code is unmapped), attacker ends")),
    AttackSpec("gate-return-page",
               "jump into the page a kernel-called gate returns to (KERNEL_RETURN)",
               "kernel_code_jump", ("{kernel_return}", "0x0"),
               Expect("#UD there (the page holds only ud2), attacker ends, kernel goes on",
                      "#UD", rip="kernel_return")),
    AttackSpec("app-read-server",
               "application (ring 3, own page table) reads echo's stack", "app_read_server",
               ("{echo_stack}",),
               _absent(Access.READ, "echo_stack", "#PF not present in ring 3, attacker ends"),
               in_kernel=False),
    # -- the isolation breaks of issue 10: each row fails until the kernel stops it --
    AttackSpec("pkru-refresh",
               "victim server S calls attacker R with its secret's address; R's handler spins "
               "on S's thread while R's second thread connects to S (a PKRU refresh of S's "
               "threads), then reads the secret", "pkru_refresh", (),
               _pkey_fault(Access.READ, "partner_secret",
                           "#PF protection key (AD) reading S's secret in R's handler; R "
                           "ends, S's call returns -EPIPE (-32), S lives on"),
               partner=Partner("secret_server", before=True, lines=(f"call = {EPIPE}",),
                               symbols=("secret",))),
    AttackSpec("forged-return",
               "attacker R keeps victim client V's call in its handler; R's second thread "
               "jumps into the return half of V's gate (after its call of the handler) with "
               "RSP at a forged reply", "forged_return", (),
               Expect("#UD at V's gate's ud2 (its return check), V's PKRU; R ends, V's call "
                      "returns -EPIPE (-32), V sees no forged reply and lives on",
                      "#UD", rip="partner_gate_abort", pkru="partner_pkru"),
               partner=Partner("victim_client", ("call",),
                               lines=(f"call = {EPIPE}", f"next call = {EPIPE}"))),
    AttackSpec("server-fault",
               "attacker R's handler reads echo's stack while victim client V's call runs it "
               "(on V's thread)", "faulty_server", ("{echo_stack}",),
               _pkey_fault(Access.READ, "echo_stack",
                           "#PF protection key (AD) in R's handler; R ends, not V: V's call "
                           "returns -EPIPE (-32), V lives on"),
               partner=Partner("victim_client", ("call",),
                               lines=(f"call = {EPIPE}", f"next call = {EPIPE}"))),
    AttackSpec("unmap-buffer",
               "attacker R PMO_UNMAPs the shared buffer of victim client V's connection "
               "(mapped on the kernel page table V runs on)", "unmap_buffer", (),
               Expect("-EPERM (-1): the buffer's mappings are the kernel's; V writes its "
                      "buffer and R reads it back", reports=("unmap = -1",)),
               partner=Partner("victim_client", ("buffer",), lines=("buffer ok",))),
    # -- PKU Pitfalls (Connor et al., USENIX Security 2020), adapted to this kernel --
    *(AttackSpec(f"deputy-{call}",
                 f"confused deputy: {name} with its name pointer in echo's stack and in the "
                 f"gate's control page" + (", its argument block in each" if extra else ""),
                 "deputy_names", (call, "{echo_stack}", "{gate_control}"),
                 Expect("-EFAULT (-14) for each foreign pointer, attacker runs on",
                        reports=(f"{call}(own memory) ok",
                                 f"{call}(name in echo's stack) = {EFAULT}",
                                 f"{call}(name in the control page) = {EFAULT}",
                                 *((f"{call}(arguments in echo's stack) = {EFAULT}",
                                    f"{call}(arguments in the control page) = {EFAULT}")
                                   if extra else ()))))
      for call, name, extra in (("register", "IPC_REGISTER", False),
                                ("connect", "IPC_CONNECT", False),
                                ("spawn", "SPAWN", True))),
    AttackSpec("thread-into-gate",
               "THREAD_CREATE with the entry on a gate's switch, past its caller check",
               "thread_entry", ("{gate_switch}", "0x0"),
               Expect("#UD at the gate's ud2 (no call token), echo's PKRU, attacker ends",
                      "#UD", rip="gate_abort", pkru="echo_pkru")),
    AttackSpec("thread-into-echo",
               "THREAD_CREATE with the entry at echo's entry point and the stack in echo's "
               "memory", "thread_entry", ("{echo_entry}", "{echo_thread_stack}"),
               _pkey_fault(Access.READ, "echo_thread_rsp",
                           "#PF protection key (AD) at the first read of echo's stack, "
                           "attacker ends")),
    AttackSpec("pmo-foreign",
               "PMO_MAP a writable PMO over echo's stack, a gate, its control page, its own "
               "region's kernel half; PMO_UNMAP echo's stack and a gate", "pmo_foreign",
               ("{echo_stack}", "{gate}", "{gate_control}", "{attacker_window}"),
               Expect("-EINVAL (-22) for every page outside its own window, attacker runs on",
                      reports=("map(own window) = 0", "unmap(own window) = 0",
                               f"map(echo's stack) = {EINVAL}", f"map(gate) = {EINVAL}",
                               f"map(control page) = {EINVAL}",
                               f"map(own region's upper half) = {EINVAL}",
                               f"unmap(echo's stack) = {EINVAL}", f"unmap(gate) = {EINVAL}"))),
    AttackSpec("code-alias",
               "write wrpkru; ret into a PMO mapped writable, then call it (no PMO is "
               "executable)", "code_alias", ("{attacker_window}",),
               Expect("#PF fetch from a no-execute page, attacker ends", "#PF",
                      Violation.FETCH_NX, Access.FETCH, address="attacker_window")),
    AttackSpec("code-write",
               "write wrpkru over its own code after the load-time scan", "code_write", (),
               Expect("#PF write to a read-only page (its code), attacker ends", "#PF",
                      Violation.WRITE_READ_ONLY, Access.WRITE, address="attacker_patch_site"),
               symbols=("patch_site",)),
    # A wrpkru split across two executable pages, neither of which holds it alone.
    *(AttackSpec(f"pkru-split-{variant}",
                 "in-kernel server's code holds a wrpkru split across a page boundary "
                 f"(0f 01 | ef), {'as instructions' if variant == 'plain' else 'in an immediate'}",
                 "pkru_split", (variant,),
                 Expect("refused at load: the scanner searches adjacent executable pages as "
                        "one", refused_at_load=True, finding=("wrpkru", variant == "plain")))
      for variant in ("plain", "hidden")),
)


# Privilege deprivation: each class plainly and hidden inside an immediate, reached by a
# computed jump (guest/attacks/privileged.c). The first ten are trapped by the secure
# monitor at run time; wrpkru and xrstor, which no hypervisor can trap, must be refused
# at load by the scanner.
TRAPPED_CLASSES = (("cr4", "mov cr4, rax"), ("cr0", "mov cr0, rax"), ("cr3", "mov cr3, rax"),
                   ("wrmsr", "wrmsr"), ("lgdt", "lgdt"), ("lidt", "lidt"), ("hlt", "hlt"),
                   ("cli", "cli"), ("invlpg", "invlpg"), ("out", "out dx, al"))
REFUSED_CLASSES = ("wrpkru", "xrstor")
_HOW = {"plain": "as an ordinary instruction",
        "hidden": "hidden in a movabs immediate, reached by a computed jump into it",
        "span": "straddling two instructions, reached by a computed jump into the first"}
SPANNING = ("cr4", "wrmsr")  # also straddling two instructions (privileged.c "span")
# The loader rewrites an aligned `out dx, al` into a call of the kernel's checked routine
# (bridge/iocall.py), which refuses the ungranted port: the attacker ends at its ud2.
REWRITTEN_BY_THE_LOADER = {("out", "plain"): Expect(
    "#UD in the checked routine: the loader rewrote out into a call and the port is not "
    "granted; attacker ends", "#UD", rip="io_denied")}
_TRAPPED_ROWS = ([(name, insn, variant) for name, insn in TRAPPED_CLASSES
                  for variant in ("plain", "hidden")]
                 + [(name, insn, "span") for name, insn in TRAPPED_CLASSES if name in SPANNING])
ATTACKS += tuple(
    AttackSpec(f"priv-{name}-{variant}", f"in-kernel server executes {insn} {_HOW[variant]}",
               "privileged", (name, variant),
               REWRITTEN_BY_THE_LOADER.get((name, variant)) or Expect(
                   f"VM exit at {insn}, denied by the secure monitor; attacker ends",
                   "VMEXIT", instruction=insn))
    for name, insn, variant in _TRAPPED_ROWS)
ATTACKS += tuple(
    AttackSpec(f"priv-{name}-{variant}", f"in-kernel server's code holds {name} {_HOW[variant]}",
               "pkru_writer", (name, variant),
               Expect("refused at load: the scanner finds it at any byte offset",
                      refused_at_load=True, finding=(name, variant == "plain")))
    for name in REFUSED_CLASSES for variant in ("plain", "hidden"))


@dataclass(frozen=True, slots=True)
class RowResult:
    spec: AttackSpec
    observed: str
    verdict: str
    attacker_output: str
    victim: str  # "" when the victim check passed, else what went wrong
    attacker: CapGroup | None  # None: the kernel refused to load it
    targets: dict[str, int] = field(default_factory=dict)  # as resolved for this row
    partner_output: str = ""  # the partner's console, if the row has one

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_json(self) -> dict[str, str]:
        return {"id": self.spec.id, "attack": self.spec.attack, "expected": self.spec.expect.text,
                "observed": self.observed, "verdict": self.verdict}


@dataclass(frozen=True, slots=True)
class RedTeamResult:
    rows: tuple[RowResult, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [row.to_json() for row in self.rows], "passed": self.passed}


# -- the stage --------------------------------------------------------------------------


def attack_source(program: str) -> Path:
    return guest_root() / "attacks" / f"{program}.c"


@dataclass(eq=False)
class Stage:
    kernel: Kernel
    echo: CapGroup
    client: CapGroup
    targets: dict[str, int]

    @property
    def machine(self) -> Machine:
        return self.kernel.machine


def _run_until(kernel: Kernel, done: Callable[[], bool]) -> bool:
    """Run until `done()`, or until nothing is ready or MAX_EVENTS events have passed."""
    events = itertools.count()
    kernel.run(until=lambda: done() or next(events) >= MAX_EVENTS)
    return done()


def _gate_targets(machine: Machine, gate: GateState, prefix: str = "gate") -> dict[str, int]:
    """A gate's entry, first wrpkru, the switch before it, its ud2, the instruction after
    its call of the handler (where the return half starts) and its control page."""
    code = machine.read_virtual(machine.kernel_space, gate.address, 4096)
    first = wrpkru_offsets(code)[0]
    insns = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, gate.address))
    before = [i for i in insns if i.address < gate.address + first]
    switch = next(i.address for i in reversed(before)
                  if i.mnemonic == "mov" and i.op_str.startswith("eax,"))
    abort = next(i.address for i in insns if i.mnemonic == "ud2")
    call = next(i for i in insns if i.mnemonic == "call")
    return {prefix: gate.address, f"{prefix}_wrpkru": gate.address + first,
            f"{prefix}_switch": switch, f"{prefix}_abort": abort,
            f"{prefix}_return": call.address + call.size, f"{prefix}_control": gate.control}


def _symbols(elf: Path, names: tuple[str, ...], prefix: str) -> dict[str, int]:
    return {f"{prefix}_{name}": symbol(elf, name)[0] for name in names}


def _io_denied(machine: Machine, routines: IoRoutines) -> int:
    """The checked routines' ud2 (where a refused port access ends)."""
    code = machine.read_virtual(machine.kernel_space, routines.outb, 4096)
    insns = Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, routines.outb)
    return next(i.address for i in insns if i.mnemonic == "ud2")


def build_stage() -> Stage:
    """A fresh machine with echo and a legitimate in-kernel client connected to it."""
    machine = Machine()
    kernel = Kernel(machine, ipc="underbridge")
    kernel.register_program("hello", build_program("hello", base=APP_BASE))
    echo_elf = build_program("echo", base=ECHO_BASE)
    echo = kernel.spawn(echo_elf, ["echo"], in_kernel=True)
    if not _run_until(kernel, lambda: "echo" in kernel.services
                      and echo.threads[0].state is ThreadState.BLOCKED):
        raise RedTeamError(f"echo did not come up: {bytes(echo.console)!r}")
    client = kernel.spawn(build_program(attack_source("legit_client"), base=LEGIT_BASE),
                          ["legit_client"], in_kernel=True)
    if not _run_until(kernel, lambda: not client.running
                      or client.threads[0].state is ThreadState.BLOCKED) \
            or b"legit_client: call ok" not in bytes(client.console) or not client.running:
        raise RedTeamError(f"the legitimate client failed: {bytes(client.console)!r}")
    ipc = cast("UnderbridgeIpc", kernel.ipc)
    gate = next(g for g in ipc.gates.values() if g.conn.client is client)
    root = machine.kernel_space.root
    echo_stack = echo.threads[0].context[Reg.RSP]
    targets = {
        "echo_stack": echo_stack,
        # a thread started with its stack top here first touches echo_thread_rsp
        "echo_thread_stack": echo_stack & ~0xF,
        "echo_thread_rsp": (echo_stack & ~0xF) - 8,
        "echo_entry": parse_elf(echo_elf.read_bytes(), name="echo").entry,
        "echo_pkru": ipc.domains[echo].domain.pkru,
        "kernel_data": KERNEL_DATA,
        "pt_root": root,
        "pt_self_map": root | PTE_P_RW_U,
        "all_keys_open": 0,
        "boot_stub_wrpkru": KERNEL_STUBS + 5,  # its stub was `xor ecx, ecx; xor edx, edx;`
        "kernel_return": KERNEL_RETURN,
        "current_thread": CURRENT_THREAD_PAGE,
        "io_denied": _io_denied(machine, ipc.io_routines(kernel)),
        **_gate_targets(machine, gate),
    }
    return Stage(kernel, echo, client, targets)


def _victim_problem(stage: Stage) -> str:
    """'' if echo still answers a legitimate application correctly, else what is wrong."""
    kernel = stage.kernel
    pingpong = kernel.spawn(build_program("pingpong", base=APP_BASE),
                            ["pingpong", str(VICTIM_ROUNDS), "echo"])
    _run_until(kernel, lambda: not pingpong.running)
    output = bytes(pingpong.console).decode(errors="replace").strip()
    problems = []
    if pingpong.running:
        problems.append("pingpong hung")
        kernel.kill(pingpong)
    elif (pingpong.state is not GroupState.EXITED or pingpong.exit_status != 0
          or f"pingpong: {VICTIM_ROUNDS} rounds ok" not in output):
        how = (pingpong.fault.describe() if pingpong.fault is not None
               else f"status {pingpong.exit_status}")
        problems.append(f"pingpong {pingpong.state.value} ({how}): {output}")
    if not stage.echo.running:
        problems.append("echo is gone")
    if not stage.client.running:
        problems.append("the legitimate client is gone")
    return "; ".join(problems)


# -- one row ----------------------------------------------------------------------------


MISSING = -1  # a target that never appeared (no fault field ever equals it)


def _matches(expect: Expect, attacker: CapGroup, reports: list[str], targets: dict[str, int],
             cpl: int) -> bool:
    if expect.exception is None:
        return (attacker.state is GroupState.EXITED and attacker.exit_status == 0
                and tuple(reports) == expect.reports)
    fault = attacker.fault
    if attacker.state is not GroupState.FAULTED or fault is None:
        return False

    def target(name: str | None) -> int | None:
        return None if name is None else targets.get(name, MISSING)

    wanted = ((expect.reason, fault.reason), (expect.access, fault.access),
              (target(expect.address), fault.address), (target(expect.rip), fault.rip),
              (target(expect.pkru), fault.pkru))
    return (fault.mnemonic == expect.exception and fault.cpl == cpl
            and all(want is None or want == got for want, got in wanted)
            and (expect.instruction is None or fault.instruction.startswith(expect.instruction)))


def _found(elf: Path, finding: tuple[str, bool] | None) -> str:
    """The scanner's finding of this class and alignment in elf, described; '' if none."""
    if finding is None:
        return ""
    kind, aligned = finding
    for hit in scan_elf(elf).pkru_writers:
        if hit.kind == kind and hit.aligned == aligned:
            where = "aligned" if aligned else "inside " + " / ".join(map(str, hit.overlaps))
            return f"{kind} found at {hit.vaddr:#x}, {where}"
    return ""


def _lines(group: CapGroup) -> list[str]:
    return bytes(group.console).decode(errors="replace").splitlines()


def _note_partner_gate(stage: Stage, partner: CapGroup | None, targets: dict[str, int]) -> None:
    """Once the partner has connected as a client, publish its gate's targets and PKRU."""
    if partner is None or "partner_gate" in targets:
        return
    ipc = cast("UnderbridgeIpc", stage.kernel.ipc)
    gate = next((g for g in ipc.gates.values() if g.conn.client is partner), None)
    if gate is not None:
        targets.update(_gate_targets(stage.machine, gate, "partner_gate"))
        targets["partner_pkru"] = ipc.domains[partner].domain.pkru


def _settled(group: CapGroup) -> bool:
    """Has the partner ended, or is each of its threads blocked for good (or gone)?"""
    return not group.running or all(t.state in (ThreadState.BLOCKED, ThreadState.DEAD)
                                    for t in group.threads)


def _partner_said(partner: CapGroup) -> tuple[str, ...]:
    return tuple(line.removeprefix("victim: ") for line in _lines(partner)
                 if line.startswith("victim: "))


def _partner_problem(partner: CapGroup | None, wanted: Partner | None) -> str:
    """'' if the partner is alive and printed exactly its expected lines, else what not."""
    if partner is None or wanted is None:
        return ""
    problems = []
    if not partner.running:
        how = (partner.fault.describe() if partner.fault is not None
               else f"exited with status {partner.exit_status}")
        problems.append(f"{partner.name} is gone ({how})")
    said = _partner_said(partner)
    if said != wanted.lines:
        problems.append(f"{partner.name} printed " + (" | ".join(said) or "nothing")
                        + " instead of " + " | ".join(wanted.lines))
    problems.extend(f"{partner.name}: {line}" for line in _lines(partner)
                    if any(word in line for word in BAD_WORDS) and not line.startswith("victim: "))
    return "; ".join(problems)


def _spawn(kernel: Kernel, elf: Path, program: str, args: tuple[str, ...],
           targets: dict[str, int], *, in_kernel: bool) -> CapGroup:
    argv = [program, *(word.format(**{k: f"{v:#x}" for k, v in targets.items()})
                       for word in args)]
    return kernel.spawn(elf, argv, name=program, in_kernel=in_kernel)


def run_row(index: int, spec: AttackSpec) -> RowResult:
    stage = build_stage()
    kernel = stage.kernel
    base = ATTACK_BASE + index * REGION_SIZE if spec.in_kernel else APP_BASE
    elf = build_program(attack_source(spec.program), base=base)
    targets = {**stage.targets, "attacker_window": base + REGION_SIZE // 4,
               **_symbols(elf, spec.symbols, "attacker")}
    partner = None
    partner_elf = None
    if spec.partner is not None:
        partner_elf = build_program(attack_source(spec.partner.program), base=PARTNER_BASE)
        targets.update(_symbols(partner_elf, spec.partner.symbols, "partner"))

    def spawn_partner() -> CapGroup:
        assert spec.partner is not None and partner_elf is not None
        return _spawn(kernel, partner_elf, spec.partner.program, spec.partner.args, targets,
                      in_kernel=True)

    if spec.partner is not None and spec.partner.before:
        partner = spawn_partner()
    try:
        attacker = _spawn(kernel, elf, spec.program, spec.args, targets,
                          in_kernel=spec.in_kernel)
    except UserError as error:  # refused at load
        observed = f"refused at load: {str(error).splitlines()[0]}"
        found = _found(elf, spec.expect.finding)
        observed += f"; {found}" if found else ""
        victim = _victim_problem(stage)
        verdict = (PASS if spec.expect.refused_at_load and not victim
                   and (spec.expect.finding is None or found) else FAIL)
        return RowResult(spec, observed + (f"; victim: {victim}" if victim else ""), verdict,
                         "", victim, None, targets)
    if spec.partner is not None and partner is None:
        partner = spawn_partner()

    def attack_over() -> bool:
        _note_partner_gate(stage, partner, targets)
        return not attacker.running

    _run_until(kernel, attack_over)
    if partner is not None:  # what the attack left it to do (a call that returns, ...)
        _run_until(kernel, lambda: _settled(partner))
    output = bytes(attacker.console).decode(errors="replace")
    lines = output.splitlines()
    reports = [line.removeprefix("observed: ") for line in lines if line.startswith("observed: ")]
    bad = [line for line in lines if any(word in line for word in BAD_WORDS)]
    parts = list(reports)
    if attacker.running:
        parts.append("still running (killed)")
        kernel.kill(attacker)
    elif attacker.fault is not None:
        parts.append(attacker.fault.describe())
    elif spec.expect.exception is not None or attacker.exit_status != 0:
        parts.append(f"exited with status {attacker.exit_status}")
    parts.extend(line for line in bad if line not in parts)
    if partner is not None:
        parts.append(f"{partner.name}: " + (" | ".join(_partner_said(partner)) or "(silent)"))
    matched = not spec.expect.refused_at_load and _matches(
        spec.expect, attacker, reports, targets, cpl=0 if spec.in_kernel else 3)
    victim = "; ".join(problem for problem in (_victim_problem(stage),
                                               _partner_problem(partner, spec.partner))
                       if problem)
    if victim:
        parts.append(f"victim: {victim}")
    verdict = PASS if matched and not victim and not bad else FAIL
    return RowResult(spec, "; ".join(parts), verdict, output, victim, attacker, targets,
                     "" if partner is None else bytes(partner.console).decode(errors="replace"))


def run(specs: tuple[AttackSpec, ...] = ATTACKS,
        progress: Callable[[AttackSpec], None] | None = None) -> RedTeamResult:
    rows = []
    for position, spec in enumerate(specs):
        # a row of the table keeps its own attacker region, whichever rows run with it
        index = ATTACKS.index(spec) if spec in ATTACKS else position
        rows.append(run_row(index, spec))
        if progress is not None:
            progress(spec)
    return RedTeamResult(tuple(rows))
