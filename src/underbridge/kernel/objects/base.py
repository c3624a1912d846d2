"""What every kernel object has: a type for CAP_INFO and a liveness flag for revocation."""

from __future__ import annotations

from underbridge.abi.syscalls import ObjType


class KernelObject:
    """Base of kernel objects. Destroying one revokes every capability to it."""

    obj_type: ObjType

    def __init__(self) -> None:
        self.alive = True

    @property
    def kind_name(self) -> str:
        return type(self).__name__

    def mark_destroyed(self) -> None:
        self.alive = False

    def destroy(self) -> None:
        """Give back what the object holds and revoke every cap to it (types with
        resources override this)."""
        self.mark_destroyed()
