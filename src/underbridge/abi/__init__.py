"""The guest ABI: the vocabulary the kernel and the bridge share with guests.

`syscalls.py` is THE syscall table (numbers, arguments, results), with the error codes,
rights, object types, PMO_MAP protection bits and limits a guest sees; the guest header
guest/include/ub_syscall.h is generated from it.

Layer: above `machine`, beside `elf`, below `bridge` and `kernel` (tests/test_layers.py).
It imports nothing of underbridge, so both the bridge and the kernel may use it.
"""
