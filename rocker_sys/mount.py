"""Mounts through the new mount API (fsopen/fsconfig/fsmount/move_mount).

Detached mounts are file descriptors: the daemon builds them with host
privileges and the guard attaches them inside its own mount namespace.
"""

from __future__ import annotations

import ctypes
import os

from . import fs, nr
from .libc import check, libc, syscall

MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8

FSOPEN_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

MOVE_MOUNT_F_EMPTY_PATH = 0x4
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount", target)


def make_rprivate(target: str = "/") -> None:
    mount(None, target, None, MS_REC | MS_PRIVATE)


def fsopen(fstype: str) -> int:
    return syscall(nr.FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC), call="fsopen", target=fstype)


def fsconfig_string(fsfd: int, key: str, value: str, what: str) -> None:
    syscall(nr.FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_STRING), _b(key), _b(value),
            ctypes.c_int(0), call="fsconfig", target=f"{what} {key}={value}")


def fsconfig_flag(fsfd: int, key: str, what: str) -> None:
    syscall(nr.FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_FLAG), _b(key), None,
            ctypes.c_int(0), call="fsconfig", target=f"{what} {key}")


def fsconfig_fd(fsfd: int, key: str, fd: int, what: str) -> None:
    syscall(nr.FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_FD), _b(key), None,
            ctypes.c_int(fd), call="fsconfig", target=f"{what} {key}")


def fd_path(fd: int) -> str:
    """/proc/self/fd/N: a path string the kernel follows (magic link) to exactly what `fd` holds,
    resolving no name again; for fsconfig keys that take no fds (overlayfs before 6.13)."""
    return f"/proc/self/fd/{fd}"


def fsconfig_create(fsfd: int, what: str) -> None:
    syscall(nr.FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None,
            ctypes.c_int(0), call="fsconfig(create)", target=what)


def fsmount(fsfd: int, attrs: int, what: str) -> int:
    return syscall(nr.FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs),
                   call="fsmount", target=what)


def move_mount(mfd: int, target: str) -> None:
    """Attach the detached mount `mfd` at `target` in the caller's mount namespace."""
    syscall(nr.MOVE_MOUNT, ctypes.c_int(mfd), b"", ctypes.c_int(AT_FDCWD), _b(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH), call="move_mount", target=target)


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def umount(target: str, flags: int = 0) -> None:
    check(libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    syscall(nr.PIVOT_ROOT, _b(new_root), _b(put_old), call="pivot_root", target=new_root)


def clone_tree(fd: int, what: str) -> int:
    """A detached bind of what `fd` (a mount, or a dir in one) points at."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH
    return syscall(nr.OPEN_TREE, ctypes.c_int(fd), b"", ctypes.c_uint(flags), call="open_tree", target=what)


def clone_subdir(mfd: int, rel: str, what: str) -> int:
    """A detached bind of `rel` below the detached mount `mfd`, reached with no symlink
    and no mount on the way (so it cannot lead out of that mount)."""
    sub = fs.open_nofollow(rel, fs.O_PATH_DIR, dir_fd=mfd, same_mount=True)
    try:
        return clone_tree(sub, what)
    finally:
        os.close(sub)
