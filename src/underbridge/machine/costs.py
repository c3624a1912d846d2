"""THE table of primitive costs behind every simulated cycle count.

Simulated cycles = executed guest instructions, one cycle each, except instructions that
are themselves a costed primitive (wrpkru, syscall, ...), which cost their row instead
+ events charged by name by the Python kernel for work a real kernel would do in
machine code (a sysret back to the caller, a CR3 write on an address-space switch).

Invariants:
  - Every charge names a row of COSTS; nothing is tuned per IPC design.
  - Every row cites where its number was published.
Who may change a row: nobody without a new citation.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

SKYBRIDGE = "SkyBridge, Mi et al., EuroSys 2019, Table 1 (Skylake)"
UNDERBRIDGE_TALK = "UnderBridge, Gu et al., USENIX ATC 2020, talk slides"
UNDERBRIDGE_PAPER = "UnderBridge, Gu et al., USENIX ATC 2020, section 1"
#: The clock simulated cycles are read at, as time: the base clock of the paper's
#: machine (Intel Xeon Gold 6138, 2.0 GHz). Throughputs and the guests' clock use it.
NOMINAL_HZ: Final = 2_000_000_000
# Measured for this project: seL4 commit 1326364bc9135d9445d936ebc01e38a402c1f4c6 built
# with its own CMake (pc99, x86_64, single core, fastpath on, non-MCS, release) by Debian
# gcc 12.2 -O2; the compiled kernel's path from the syscall entry to sysretq (both
# excluded) was followed instruction by instruction in its disassembly, for the common
# case (receiver waiting, no FPU switch, different address space, 0 message registers:
# Call 196 / ReplyRecv 224 with KernelSkimWindow off, of which 1 mov cr3; 208 / 236 with
# it on, of which 2 mov cr3; +6 for the first message register, +5 for each next; no
# swapgs on a single-core build).
SEL4_FASTPATH = "seL4 x86_64 fastpath, instructions measured from the compiled kernel"
# Zircon's own benchmark log, docs/benchmarks/microbenchmarks.md, "Run 1-2-2018" (Intel NUC
# NUC7i3BNK, i3-7100U at 2.40 GHz, zircon-benchmarks, Time column, ns), converted at 2.4
# cycles per ns. Checked in a stored copy of that file (sixtymin/ZirconDoc at eff0b9f3,
# a translation keeping the tables) and against the benchmarks' code of that time
# (zircon_benchmarks channels.cc, round_trips.cc). Each Zircon row times whole syscalls
# from user space: entry, the operation, exit. The rows below keep only the operation,
# the row minus `Syscall/Null` (66 ns, a syscall that does nothing: its entry, dispatch
# and exit), because the zircon design charges a syscall's entry and exit as this
# table's own syscall, swapgs and sysret rows; charging the whole Zircon row as well
# would count every entry and exit twice. What the rows still include: Channel/Write
# and Channel/Read pause the timer around the opposite operation (Google Benchmark's
# PauseTiming/ResumeTiming), whose own cost partly lands in the row, so if anything they
# are high. What no row covers: blocking a thread and waking another (the scheduler),
# which the zircon design therefore does not charge.
ZIRCON_LOG = "Zircon's microbenchmarks.md, run 1-2-2018 (i3-7100U, 2.4 GHz)"
ZIRCON_CYCLES_PER_NS = 2.4
ZIRCON_SYSCALL_NULL_NS = 66


@dataclass(frozen=True, slots=True)
class Cost:
    """One primitive's cost in cycles on a Skylake-class Xeon, and where it is published."""

    cycles: int
    source: str


def _zircon_operation(row: str, ns: int) -> Cost:
    """A Zircon syscall's own work: its published row minus a null syscall, in cycles."""
    cycles = round((ns - ZIRCON_SYSCALL_NULL_NS) * ZIRCON_CYCLES_PER_NS)
    return Cost(cycles, f"{ZIRCON_LOG}: {row} {ns} ns - Syscall/Null 66 ns, x 2.4")


COSTS: Final = MappingProxyType(
    {
        "instruction": Cost(1, "model assumption: one cycle per retired instruction"),
        "wrpkru": Cost(28, UNDERBRIDGE_TALK + " (domain switch takes 28 cycles)"),
        "function_call": Cost(24, UNDERBRIDGE_PAPER + " (function-pointer call in a kernel)"),
        "syscall": Cost(82, SKYBRIDGE),
        "swapgs": Cost(26, SKYBRIDGE),
        "sysret": Cost(75, SKYBRIDGE),
        "cr3_write": Cost(186, SKYBRIDGE + " (CR3 write with PCID)"),
        "vmfunc": Cost(134, SKYBRIDGE + " (VMFUNC EPTP switch)"),
        # No Skylake-specific figure could be verified; this Nehalem one (older, slower
        # transitions) is the closest published number we could check, so VM exits are
        # if anything overcharged.
        # The seL4 kernel's own work on its IPC fastpath, in instructions at one cycle each
        # (see SEL4_FASTPATH below for how they were measured). `mov cr3` is not included
        # here: it is charged as cr3_write. Each count includes 4 message registers.
        "sel4_fastpath_call": Cost(195 + 21, SEL4_FASTPATH + ", Call, skim window off"),
        "sel4_fastpath_replyrecv": Cost(223 + 21, SEL4_FASTPATH + ", ReplyRecv, skim window off"),
        "sel4_fastpath_call_kpti": Cost(206 + 21, SEL4_FASTPATH + ", Call, skim window on"),
        "sel4_fastpath_replyrecv_kpti": Cost(
            234 + 21, SEL4_FASTPATH + ", ReplyRecv, skim window on"
        ),
        # Zircon's channel operations (ZIRCON_LOG above: what they include and exclude).
        "zircon_channel_write": _zircon_operation("Channel/Write/64", 618),
        "zircon_channel_read": _zircon_operation("Channel/Read/64", 608),
        # zx_object_wait_one on an event already signaled: the wait's own work without
        # blocking (the closest published row to a server's wait for its next message).
        "zircon_object_wait": _zircon_operation("WaitItems/WaitForAlreadySignaledEvent", 426),
        # One INVLPG: the TLB flush of one page whose mapping changed (live migration).
        "invlpg": Cost(
            200,
            "Linux arch/x86/mm/tlb.c, comment on tlb_single_page_flush_ceiling: "
            "each single flush is about 100 ns; x 2.0 GHz (NOMINAL_HZ)",
        ),
        "vm_exit": Cost(
            2000,
            "SplitX, Landau et al., WIOV 2011, section 1: direct cost of an "
            "exit (world switch out and back) on a Xeon X5570 (Nehalem)",
        ),
    }
)

# Published end-to-end figures the model is checked against, never charged.
REFERENCE: Final = MappingProxyType(
    {
        "noop_syscall_roundtrip": Cost(181, SKYBRIDGE),
        "noop_syscall_roundtrip_kpti": Cost(431, SKYBRIDGE),
        "underbridge_ipc_roundtrip": Cost(109, "UnderBridge, Gu et al., USENIX ATC 2020, abstract"),
        "sel4_call_reply_skylake": Cost(
            772,
            "seL4 benchmarks, i7-6700 Skylake: Call 383 + "
            "ReplyRecv 389 (sel4bench issue 41, G. Heiser)",
        ),
        "zircon_channel_call_roundtrip": Cost(
            round(6452 * ZIRCON_CYCLES_PER_NS),
            # The row is RoundTrip_ChannelCall_MultiProcess; its name is split so that
            # `reproduce` can wrap it in a table column.
            f"{ZIRCON_LOG}: RoundTrip_ChannelCall, MultiProcess: 6,452 ns, x 2.4 "
            "(client zx_channel_call; server zx_object_wait_one, read, write)",
        ),
    }
)


def cycles(event: str) -> int:
    """Cycles of one named primitive; KeyError names an event nobody published."""
    return COSTS[event].cycles
