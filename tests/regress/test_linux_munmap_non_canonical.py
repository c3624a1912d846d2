"""Regression: Linux munmap of a non-canonical address raised ValueError out of the kernel.

sys_munmap checked alignment and length only, then looked every page up in the page
table, whose index computation refuses a non-canonical address with ValueError: a
Linux-ABI guest calling munmap(0x624f00578867f000, 4096) stopped Kernel.run (found by
`underbridge fuzz`: a mutated fuzz_syscalls spawned with abi="linux"). Fixed in
linux_abi.sys_munmap: a range that leaves the lower half is -EINVAL, as on Linux.
"""

from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.objects.capgroup import GroupState
from underbridge.machine.cpu import Machine

SOURCE = r"""
static long linux_syscall2(long n, unsigned long a, unsigned long b)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return ret;
}

int main(void)
{
    long first = linux_syscall2(11, 0x624f00578867f000UL, 4096); /* munmap */
    long second = linux_syscall2(11, 0x7ffffffff000UL, 0x2000);   /* past the lower half */
    linux_syscall2(231, first == -22 && second == -22 ? 0 : 1, 0); /* exit_group */
    return 2;
}
"""


def test_munmap_of_a_non_canonical_range_is_einval(tmp_path):
    source = tmp_path / "munmap_wild.c"
    source.write_text(SOURCE)
    kernel = Kernel(Machine(accounting=False))
    guest = kernel.spawn(build_program(source, base=0x40_0000), abi="linux")
    kernel.run()
    assert guest.state is GroupState.EXITED and guest.exit_status == 0
