"""Shared fixtures for the whole suite."""

from pathlib import Path

import pytest

from underbridge.guestbuild.toolchain import build_program

HELLO_BASE = 0x400000


@pytest.fixture(scope="session")
def hello_elf() -> Path:
    """guest/apps/hello.c built at HELLO_BASE (through the on-disk build cache)."""
    return build_program("hello", base=HELLO_BASE)
