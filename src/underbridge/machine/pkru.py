"""PKRU, the protection-key rights register: two bits per key.

For key k, bit 2k is AD (access disable: no data reads or writes) and bit 2k+1 is WD
(write disable). PKRU governs data accesses to U=1 pages only, in ring 3 and, as the
UnderBridge design relies on, in ring 0 too (WD in ring 0 only while CR0.WP=1).
Instruction fetches are never subject to PKRU.
"""

from __future__ import annotations

from collections.abc import Iterable

PKRU_ALLOW_ALL = 0
PKRU_DENY_ALL = 0xFFFF_FFFF


def ad_bit(key: int) -> int:
    return 1 << (2 * key)


def wd_bit(key: int) -> int:
    return 1 << (2 * key + 1)


def access_disabled(pkru: int, key: int) -> bool:
    return bool(pkru & ad_bit(key))


def write_disabled(pkru: int, key: int) -> bool:
    return bool(pkru & wd_bit(key))


def pkru_allowing(read_write: Iterable[int] = (), read_only: Iterable[int] = ()) -> int:
    """The PKRU that opens exactly these keys and denies every other one."""
    pkru = PKRU_DENY_ALL
    for key in read_write:
        pkru &= ~(ad_bit(key) | wd_bit(key))
    for key in read_only:
        pkru &= ~ad_bit(key)
    return pkru & 0xFFFF_FFFF
