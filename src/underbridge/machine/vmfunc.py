"""VMFUNC leaf 0 (EPTP switching), emulated: the hardware SkyBridge builds its IPC on.

On a real CPU in VMX non-root mode, `vmfunc` (0F 01 D4) with EAX = 0 loads the EPT
pointer at index ECX of the EPTP list the hypervisor put in the VMCS (up to 512
entries), without a VM exit and at any CPL: from then on the same guest-physical
addresses, the guest's CR3 value included, translate through another EPT. SkyBridge's
Rootkernel gives every process an EPTP list whose entries are copies of its servers'
EPTs in which the guest-physical page of the process's page-table root is backed by the
server's page-table root: after the switch the unchanged CR3 walks the server's page
table (Mi et al., EuroSys 2019, section 4).

Unicorn has no EPT and raises #UD for vmfunc. The machine emulates it here: on #UD at
`0F 01 D4` with EAX = 0 and ECX naming an entry of the running thread's EPTP list, it
points the context's translation root at that entry's page table, leaves RIP past the
instruction and resumes, never entering the kernel. Anything else stays #UD.

What this does NOT model, honestly stated:
  - Guest-physical vs host-physical: there is one level of translation. The emulated
    switch changes the saved CR3 register to the server's page-table root (the engine
    has no other root to change); on hardware CR3 keeps its value and the EPT remaps
    what it points to. No guest can observe the difference: ring 3 cannot read CR3, and
    no CR3 write is charged or counted (the block accounting charges vmfunc's own row,
    134 cycles, SkyBridge Table 1, because `0F 01 D4` is a costed instruction,
    accounting.py).
  - TLB: the machine flushes its whole emulated TLB on the switch (the root differs);
    hardware with VPID/EPTP tagging keeps entries per EPT. The flush costs wall time
    only, never simulated cycles.
  - An invalid index on hardware causes a VM exit the hypervisor answers; here it is
    reported as #UD, as Unicorn would without emulation.
  - The EPTP list a VMCS holds follows the thread: the kernel (the Rootkernel) installs a
    process's list when it runs a thread of that process. Here each context records
    the address space it was created for (`CpuContext.eptp_home`) and the list is
    looked up by it, which is the same thing without a hook on every context switch.

Invariants:
  - Only the kernel installs or removes lists (`install`, `remove`); a guest changes
    nothing here. A list entry names a page table the machine knows.
  - A switch changes exactly CR3 and RIP (+3) of the context; no other state.
Who may call: machine/cpu.py (`switch`), the SkyBridge IPC design (`install`, `remove`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from underbridge.machine.context import CpuContext, Reg

VMFUNC = b"\x0f\x01\xd4"
EPTP_LIST_SIZE = 512  # entries of an EPTP list (Intel SDM vol. 3, 25.5.6.3)
EPTP_SWITCHING = 0  # VMFUNC leaf 0


class EptpLists:
    """Every process's EPTP list, by the root of the page table it was made for."""

    def __init__(self) -> None:
        self._lists: dict[int, dict[int, int]] = {}
        self.switches = 0  # vmfuncs emulated so far (for tests and benchmarks)

    def install(self, home_root: int, entries: Mapping[int, int]) -> None:
        """Give the process whose page table is `home_root` this list (index -> root)."""
        if any(not 0 <= index < EPTP_LIST_SIZE for index in entries):
            raise ValueError(f"EPTP list indices run from 0 to {EPTP_LIST_SIZE - 1}")
        self._lists[home_root] = dict(entries)

    def remove(self, home_root: int) -> None:
        self._lists.pop(home_root, None)

    def entries(self, home_root: int) -> dict[int, int]:
        return dict(self._lists.get(home_root, {}))

    def switch(self, context: CpuContext, read_code: Callable[[int, int], bytes]) -> bool:
        """Emulate the vmfunc the context faulted on (#UD at its RIP), if it is one the
        hardware would execute: True, with CR3 and RIP updated; False otherwise."""
        entries = self._lists.get(context.eptp_home)
        if entries is None or context[Reg.RAX] & 0xFFFF_FFFF != EPTP_SWITCHING:
            return False
        target = entries.get(context[Reg.RCX] & 0xFFFF_FFFF)
        if target is None or read_code(context.rip, len(VMFUNC)) != VMFUNC:
            return False
        context[Reg.CR3] = target
        context.rip += len(VMFUNC)
        context.end_exception()
        self.switches += 1
        return True
