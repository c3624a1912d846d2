"""The emulated computer: one x86-64 CPU with PKU, physical memory, real page tables.

This layer never imports `underbridge.kernel`. Its public face:
  Machine (cpu.py)            owns the Unicorn handle; the only caller of emu_start
                              (its parts: boot.py, hooks.py, address_spaces.py, metering.py)
  Exit, ExitKind (exits.py)   what a run ends in
  CpuContext (context.py)     one hardware thread's saved register state
  PageTable (paging.py)       a 4-level x86-64 page table living in physical memory
  Fault (faults.py)           a decoded CPU exception
  COSTS (costs.py)            the table of primitive costs behind simulated cycles
  check_access (oracle.py)    the Intel SDM's access rules, as a specification
"""
