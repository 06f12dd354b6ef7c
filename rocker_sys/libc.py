"""The libc handle and the one place that turns -1/errno into an OSError."""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class SyscallError(OSError):
    """An OSError that says which syscall failed and on what."""

    def __init__(self, err: int, call: str, target: str | None = None) -> None:
        where = f"{call}({target})" if target is not None else call
        super().__init__(err, f"{where}: {os.strerror(err)}")
        self.call = call
        self.target = target


def check(ret: int, call: str, target: str | None = None) -> int:
    """Return `ret`, or raise SyscallError from errno when it is -1."""
    if ret < 0:
        raise SyscallError(ctypes.get_errno(), call, target)
    return ret


def syscall(nr: int, *args: object, call: str, target: str | None = None) -> int:
    """Make a raw syscall by number (x86_64 numbers; see `nr.py`)."""
    return check(_syscall(ctypes.c_long(nr), *args), call, target)
