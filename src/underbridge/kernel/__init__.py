"""The microkernel: syscalls, ELF loading, processes. Runs in Python on kernel entry."""
