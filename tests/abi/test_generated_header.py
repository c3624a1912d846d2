"""The committed syscall header is exactly what the syscall table generates."""

from underbridge.abi.syscalls import render_header
from underbridge.guestbuild.toolchain import guest_root


def test_ub_syscall_header_is_current():
    committed = (guest_root() / "include" / "ub_syscall.h").read_text()
    assert committed == render_header(), (
        "guest/include/ub_syscall.h is stale; regenerate it with "
        "underbridge.abi.syscalls.render_header()"
    )
