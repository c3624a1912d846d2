"""One message register layout (abi/message.py) for the designs, the gate and the guest
IPC library: the C sources and the gate template name the same registers, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import underbridge.bridge.gate as gate_module
from underbridge.abi.message import DELIVERED, GATE_MESSAGE, REPLIED, SENT
from underbridge.guestbuild.toolchain import guest_root
from underbridge.machine.context import Reg


def _regs(names: list[str]) -> tuple[Reg, ...]:
    return tuple(Reg[name.upper()] for name in names)


def _c_function(path: Path, name: str) -> str:
    source = path.read_text()
    start = source.index(f"{name}(")
    return source[start : source.index("\n}\n", start)]


def _ub_ipc_call_branches() -> tuple[str, str]:
    body = _c_function(guest_root() / "include" / "ub_ipc.h", "ub_ipc_call")
    gate, syscall = body.split("IPC_CALL:", 1)
    return gate, syscall


def _sent(code: str, pattern: str) -> list[str]:
    """Registers loaded from mr[0..3], in mr order."""
    found = dict(
        (int(i), reg)
        for reg, i in re.findall(rf"{pattern}(\w+)[^=;]*= (?:msg->)?mr\[(\d)\];", code)
    )
    return [found[i] for i in range(4)]


def _received(code: str) -> list[str]:
    """Registers stored into mr[0..3], in mr order."""
    found = dict((int(i), reg) for i, reg in re.findall(r"mr\[(\d)\] = (\w+);", code))
    return [found[i] for i in range(4)]


@pytest.mark.parametrize(
    ("branch", "sent", "received"),
    [(0, GATE_MESSAGE, GATE_MESSAGE), (1, SENT, REPLIED)],
    ids=["gate", "syscall"],
)
def test_ub_ipc_call_uses_the_layout(branch, sent, received):
    code = _ub_ipc_call_branches()[branch]
    assert _regs(_sent(code, r"long ")) == sent
    assert _regs(_received(code)) == received


def test_reply_wait_receives_the_delivered_layout():
    code = _c_function(guest_root() / "runtime" / "ipc.c", "sys_ipc_reply_wait")
    assert _regs(_sent(code, r"long ")) == SENT  # the reply goes out as a call does
    assert _regs(_received(code)) == DELIVERED


def test_the_gate_hands_the_handler_the_gate_layout():
    """The gate template stores mr0..mr3 into the handler's message, in order."""
    source = Path(gate_module.__file__).read_text()
    stored = re.findall(r'"mov \[rsp \+ (16|24|32|40)\], (\w+)"', source)
    assert _regs([reg for _, reg in sorted(stored, key=lambda s: int(s[0]))]) == GATE_MESSAGE
