"""Building guest code with the host's tools, each result cached by content.

  toolchain.py      guest C programs into static x86-64 ELF files (gcc, musl-gcc)
  asm.py            small x86-64 snippets (gates, stubs, benchmarks) with GNU as
  sqlite_source.py  the pinned SQLite amalgamation: fetch, verify, compile once

Layer: the lowest but `errors` (tests/test_layers.py): it imports nothing else of
underbridge, so every layer may build guest code; the machine compiles its C block hook
(machine/native_accounting.py) with the toolchain's gcc and cache too.
"""
