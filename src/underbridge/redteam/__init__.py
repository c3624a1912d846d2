"""`underbridge redteam`: attacks on the UnderBridge placement (and on the other designs'
own mechanisms), each checked against the hardware.

Every row is one attack program (guest/attacks/<program>.c, its header comment says what
it tries and what should happen) run on a fresh machine under `Kernel(ipc=spec.mode)`,
"underbridge" for every row but the few that name another design. Under underbridge
the stage is:

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

A row with another `mode` gets that design's stage (stage.py), read from its declared
traits: echo, the legitimate client, the partner and an attacker that is not an
application are placed where the design places servers (kernel space, its domains and
its ring, if `servers_in_kernel`; else user space, each in its own process); the targets
are those that exist there (echo's stack and PKRU; under skybridge the legitimate
client's trampoline and calling-key record page, no gate), and a fault of a placed
attacker is expected in the design's ring. The victim check is the same. Rows: SkyBridge
(a call without the calling key, a return with a forged key, a stray vmfunc), pku-shared
(an application that writes PKRU before connecting), pku-user (a server reading another
server's stack in the shared process).

To add a row (say, a privileged instruction in ring 0), write guest/attacks/<name>.c and
append an AttackSpec to ATTACKS (rows.py, THE table).

  spec.py    what a row is (AttackSpec, Expect, Partner) and the stage's layout
  rows.py    THE table of attacks (ATTACKS)
  stage.py   a fresh machine under the row's design with echo and a legitimate client;
             the targets; the victim check
  runner.py  one row run and judged (run_row), every row (run), their results
"""

from underbridge.redteam.rows import ATTACKS
from underbridge.redteam.runner import RedTeamResult, RowResult, run, run_row
from underbridge.redteam.spec import (
    ATTACK_BASE,
    FAIL,
    PASS,
    AttackSpec,
    Expect,
    Partner,
)

__all__ = [
    "ATTACKS",
    "ATTACK_BASE",
    "FAIL",
    "PASS",
    "AttackSpec",
    "Expect",
    "Partner",
    "RedTeamResult",
    "RowResult",
    "run",
    "run_row",
]
