"""Every IPC design by name: the one list of designs (`--mode` of every command).

Each entry names the module and class of a design and its arguments; the module is
imported only when a kernel asks for the design, so listing the names (the CLI's
`--help`) imports no emulator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from underbridge.kernel.ipc import IpcDesign

_DESIGNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "monolithic": ("monolithic", "MonolithicIpc", {}),
    "sel4": ("sel4", "Sel4Ipc", {"kpti": False}),
    "sel4-kpti": ("sel4", "Sel4Ipc", {"kpti": True}),
    "underbridge": ("underbridge", "UnderbridgeIpc", {}),
    "zircon": ("zircon", "ZirconIpc", {}),
    "skybridge": ("skybridge", "SkybridgeIpc", {}),
    "pku-user": ("pku_user", "PkuUserIpc", {}),
    "pku-shared": ("pku_shared", "PkuSharedIpc", {}),
}
DESIGNS = tuple(_DESIGNS)


def design_named(name: str) -> IpcDesign:
    if name not in _DESIGNS:
        raise ValueError(f"unknown IPC design {name!r}; known: {', '.join(DESIGNS)}")
    module, cls, kwargs = _DESIGNS[name]
    design = getattr(import_module(f"underbridge.kernel.ipc.{module}"), cls)
    return design(**kwargs)  # type: ignore[no-any-return]
