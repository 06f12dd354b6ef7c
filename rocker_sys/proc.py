"""Process attributes: prctl and per-thread credentials."""

from __future__ import annotations

import ctypes

from . import nr
from .libc import check, libc, syscall

PR_SET_NAME = 15


def prctl(option: int, arg: int = 0) -> None:
    check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)), "prctl", str(option))


def set_thread_euid(uid: int) -> None:
    """setresuid(-1, uid, -1) for the calling thread only (glibc's seteuid signals every
    thread of the process to do the same): a brief switch that must not leak elsewhere."""
    syscall(nr.SETRESUID, ctypes.c_long(-1), ctypes.c_long(uid), ctypes.c_long(-1), call="setresuid",
            target=str(uid))


def setfsuid(uid: int) -> int:
    """Per-thread filesystem uid; returns the previous one (the call cannot report errors)."""
    return int(libc.setfsuid(ctypes.c_uint(uid)))


def setfsgid(gid: int) -> int:
    return int(libc.setfsgid(ctypes.c_uint(gid)))


def set_thread_groups(groups: tuple[int, ...] | list[int]) -> None:
    """setgroups(2) for the calling thread only: glibc's setgroups makes every thread of the
    process do the same (it signals them), the raw syscall changes this thread's credentials."""
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    syscall(nr.SETGROUPS, ctypes.c_size_t(len(groups)), arr, call="setgroups", target=f"{len(groups)} groups")
