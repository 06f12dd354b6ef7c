"""Namespaces and processes: clone, unshare, setns, pidfds."""

from __future__ import annotations

import ctypes
import signal

from . import nr
from .libc import check, libc, syscall

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PARENT = 0x00008000

ROCKER_NS = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET


def clone(flags: int) -> int:
    """Raw clone(2) with no new stack: fork semantics plus namespace flags.

    Returns 0 in the child, the child's PID in the parent. Python's fork hooks
    do not run in the child; callers use this only where that is harmless.
    """
    return syscall(nr.CLONE, ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None, None, call="clone")


def unshare(flags: int) -> None:
    check(libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def setns(fd: int, flags: int, what: str = "") -> None:
    check(libc.setns(ctypes.c_int(fd), ctypes.c_int(flags)), "setns", what or hex(flags))


def pidfd_open(pid: int) -> int:
    return syscall(nr.PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0), call="pidfd_open", target=str(pid))


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    syscall(nr.PIDFD_SEND_SIGNAL, ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0),
            call="pidfd_send_signal")


CLOSE_RANGE_CLOEXEC = 1 << 2


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    syscall(nr.CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags), call="close_range",
            target=f"{first}..{last}")
