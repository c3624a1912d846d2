"""underbridge: the UnderBridge microkernel design on an emulated x86-64 CPU.

Layers (each a subpackage; lower layers never import higher ones):
  machine/   the emulated computer: CPU, physical memory, page tables, PKRU, faults, costs
  kernel/    the microkernel: syscalls, ELF loader, processes
  toolchain  builds guest C sources (guest/) into static ELF files
  cli        the `underbridge` command
"""

__version__ = "0.1.0"
