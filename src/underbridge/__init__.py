"""underbridge: the UnderBridge microkernel design on an emulated x86-64 CPU.

The package is layered; LAYERS below is THE declaration of the order, lowest first:
  errors      every exception type the package raises
  guestbuild  builds guest C and assembly (gcc, GNU as) into cached ELF files and snippets
  machine     the emulated computer: CPU, physical memory, page tables, PKRU, faults, costs
  abi, elf    the guest ABI (THE syscall table, errno, rights) and ELF parsing
  bridge      UnderBridge's own mechanisms: domains, gates, the scanner, the rewriter
  kernel      the microkernel: objects, capabilities, syscalls, IPC designs, the loader
  fs          the storage stack, driven from Python
  bench       measurements and the reproduction of the paper's figures
  demos, fuzz, redteam   guided runs, the fuzzer, the red team
  cli         the `underbridge` command

Invariant (tests/test_layers.py): a module imports only from its own top-level package
and from packages of lower rows: never from a higher row, nor from another package of
its own row. This counts imports under TYPE_CHECKING and inside functions too: both
are dependencies of the design, even when they cost nothing at run time.
"""

__version__ = "0.1.0"

#: The layers, lowest first; each row's top-level packages (or modules) may import the
#: rows before it. Tests read it; nothing at run time does.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("guestbuild",),
    ("machine",),
    ("abi", "elf"),
    ("bridge",),
    ("kernel",),
    ("fs",),
    ("bench",),
    ("demos", "fuzz", "redteam"),
    ("cli",),
)
