"""Admission to kernel space cached by content: the same binary is rewritten once."""

from __future__ import annotations

import pytest

from underbridge.bench.ipc import ECHO_BASE
from underbridge.bridge import admission
from underbridge.bridge.iocall import IoRoutines
from underbridge.bridge.rewrite import rewrite_elf
from underbridge.bridge.scan import scan_elf
from underbridge.errors import UserError
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.machine.cpu import Machine

ROUTINES = IoRoutines(inb=0x7FF0_0080, outb=0x7FF0_0000)


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """A fresh cache (memory and disk), and counts of the rewriter's and scanner's runs."""
    monkeypatch.setattr(admission, "cache_dir", lambda: tmp_path / "admission")
    admission.forget()
    counts = {"rewrite": 0, "scan": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(admission, "rewrite_elf", counted("rewrite", rewrite_elf))
    monkeypatch.setattr(admission, "scan_elf", counted("scan", scan_elf))
    yield counts
    admission.forget()


def _sneaky(tmp_path, instruction: str) -> bytes:
    source = tmp_path / "sneaky.c"
    source.write_text(
        f'#include "ub.h"\nint main(void) {{\n  __asm__ volatile({instruction});\n  return 0; }}\n'
    )
    return build_program(source, base=0x0300_0000).read_bytes()


def test_the_second_admission_costs_no_rewrite_and_no_scan(calls, tmp_path):
    elf = _sneaky(tmp_path, '"mov $0x90ef010f, %%eax" ::: "eax"')  # a hidden wrpkru
    first = admission.vet(elf, name="sneaky", io_routines=ROUTINES)
    assert calls == {"rewrite": 1, "scan": 1}
    assert first[1] == () and first[0] != elf
    assert first[0] == rewrite_elf(elf, name="sneaky", io_routines=ROUTINES).data
    assert admission.vet(elf, name="sneaky", io_routines=ROUTINES) == first
    assert calls == {"rewrite": 1, "scan": 1}


def test_a_disk_entry_is_scanned_again_but_not_rewritten(calls, tmp_path):
    elf = _sneaky(tmp_path, '"mov $0x90ef010f, %%eax" ::: "eax"')
    first = admission.vet(elf, name="sneaky", io_routines=ROUTINES)
    admission.forget()  # as a new process would start
    assert admission.vet(elf, name="sneaky", io_routines=ROUTINES) == first
    assert calls == {"rewrite": 1, "scan": 2}
    assert len(list((tmp_path / "admission").glob("*.elf"))) == 1


def test_every_input_is_part_of_the_key(calls, tmp_path):
    elf = _sneaky(tmp_path, '"mov $0x90ef010f, %%eax" ::: "eax"')
    keys = {
        admission.cache_key(elf, name="sneaky", io_routines=ROUTINES, rewrite=True),
        admission.cache_key(elf, name="other", io_routines=ROUTINES, rewrite=True),
        admission.cache_key(elf, name="sneaky", io_routines=None, rewrite=True),
        admission.cache_key(elf, name="sneaky", io_routines=ROUTINES, rewrite=False),
        admission.cache_key(elf + b"\0", name="sneaky", io_routines=ROUTINES, rewrite=True),
        admission.cache_key(
            elf,
            name="sneaky",
            rewrite=True,
            io_routines=IoRoutines(inb=ROUTINES.inb + 1, outb=ROUTINES.outb),
        ),
    }
    assert len(keys) == 6


def test_a_refused_binary_is_never_cached(calls, tmp_path):
    elf = _sneaky(tmp_path, '"mov $0x90ef010f, %%eax" ::: "eax"')
    for _ in range(2):
        vetted, writers = admission.vet(elf, name="sneaky", io_routines=None, rewrite=False)
        assert vetted == elf and [f.kind for f in writers] == ["wrpkru"]
    assert calls == {"rewrite": 0, "scan": 2}
    assert not (tmp_path / "admission").exists()


def test_the_kernel_places_the_same_server_from_the_cache(calls):
    elf = build_program("echo", base=ECHO_BASE)
    images = []
    for _ in range(2):
        kernel = Kernel(Machine(accounting=False), ipc="underbridge")
        echo = kernel.spawn(elf, ["echo"], in_kernel=True)
        assert kernel.placement.domain_of(echo) is not None and echo.threads[0].context.cpl == 0
        images.append(kernel.machine.read_virtual(echo.vmspace.table, ECHO_BASE, 4096))
    assert images[0] == images[1]
    assert calls["rewrite"] == 1


def test_a_refusal_still_names_the_finding(calls, tmp_path):
    elf = _sneaky(tmp_path, '"wrpkru" :: "a"(0), "c"(0), "d"(0)')
    kernel = Kernel(Machine(accounting=False), ipc="underbridge")
    for _ in range(2):
        with pytest.raises(UserError, match=r"can change PKRU \(wrpkru at 0x"):
            kernel.spawn(elf, ["sneaky"], in_kernel=True)
    assert not kernel.groups
