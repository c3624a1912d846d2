"""One message register layout (abi/message.py) for the designs, the gate and the guest
IPC library: the C sources and the gate template name the same registers, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from underbridge.abi.message import DELIVERED, GATE_MESSAGE, REPLIED, SENT
from underbridge.bridge.handler_call import handler_call
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


def test_gates_and_trampolines_hand_the_handler_the_gate_layout():
    """The entry code (bridge/handler_call.py, used by gates and trampolines) stores
    mr0..mr3 into the handler's message in order, and reads the reply back the same way."""
    lines = handler_call(0x10000, 7, 0x5000, ("call 0x1234",))
    stored = [re.fullmatch(r"mov \[rsp \+ (\d+)\], (\w+)", line) for line in lines]
    loaded = [re.fullmatch(r"mov (\w+), \[rsp \+ (\d+)\]", line) for line in lines]
    sent = [m.group(2) for m in sorted(filter(None, stored), key=lambda m: int(m.group(1)))]
    back = [m.group(1) for m in sorted(filter(None, loaded), key=lambda m: int(m.group(2)))]
    assert _regs([reg for reg in sent if reg != "rax"]) == GATE_MESSAGE  # rax: the buffer
    assert _regs(back) == GATE_MESSAGE
    assert sorted(int(m.group(2)) for m in filter(None, loaded)) == [16, 24, 32, 40]
