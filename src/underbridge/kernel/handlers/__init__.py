"""Syscall handlers, one module per concept; kernel/dispatch.py maps numbers to them.

Every handler has the signature (kernel, thread, a0..a5) -> int | None: it validates
all its arguments first (capabilities through CapTable.lookup, pointers through umem),
raising SyscallError on the first bad one, and only then acts. It returns the value
for RAX, or None when it has arranged the thread's registers itself (a blocked thread
gets its result when it is woken).
"""
