"""ELF files: parsing a static x86-64 executable into a validated image (`image.py`).

Layer: above `machine`, beside `abi`, below `bridge` and `kernel` (tests/test_layers.py).
It imports nothing of underbridge but `errors`; placing an image in an address space is
the kernel's loader (kernel/loader.py), not this layer's.
"""
