"""Process attributes: prctl, credentials, exec by fd."""

from __future__ import annotations

import ctypes
from functools import cache

from . import nr
from .libc import check, libc, syscall

PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


def prctl(option: int, arg: int = 0) -> None:
    check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)), "prctl", str(option))


def sethostname(name: str) -> None:
    raw = name.encode()
    check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def execveat(fd: int, argv: list[str], envp: list[str]) -> None:
    """Exec the program open at `fd` (needs no path the new uid could walk)."""
    av = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
    ev = (ctypes.c_char_p * (len(envp) + 1))(*[e.encode() for e in envp], None)
    syscall(nr.EXECVEAT, ctypes.c_int(fd), b"", av, ev, ctypes.c_int(0x1000), call="execveat", target=argv[0])


PR_CAPBSET_DROP = 24
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@cache
def cap_last_cap() -> int:
    """The kernel's highest capability number; read once per process (call it before forking)."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def limit_caps(keep: int, last_cap: int) -> None:
    """Drop every capability not in the bit mask `keep` from bounding, permitted, effective, inheritable."""
    for cap in range(last_cap + 1):
        if not keep >> cap & 1:
            check(libc.prctl(ctypes.c_int(PR_CAPBSET_DROP), ctypes.c_ulong(cap), 0, 0, 0), "prctl(PR_CAPBSET_DROP)",
                  str(cap))
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    lo, hi = keep & 0xFFFFFFFF, keep >> 32
    data = (_CapData * 2)(_CapData(lo, lo, 0), _CapData(hi, hi, 0))
    check(libc.capset(ctypes.byref(hdr), data), "capset")


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
