"""Mounts through the new mount API (fsopen/fsconfig/fsmount/move_mount).

Detached mounts are file descriptors: the daemon builds them with host
privileges and the guard attaches them inside its own mount namespace.
"""

from __future__ import annotations

import ctypes
import os

from . import fs, nr
from .libc import SyscallError, check, libc, syscall

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


class KernelSaid(SyscallError):
    """A failed fsconfig with what the kernel wrote to the fs context about it (`messages`, its own
    words, e.g. "overlay: filesystem on upper not supported as upperdir") and what to do."""

    def __init__(self, err: int, call: str, target: str, messages: list[str], advice: str = "") -> None:
        super().__init__(err, call, target)
        self.messages = messages
        said = "; ".join(messages)
        self.strerror = (f"{self.strerror}{': the kernel says: ' + said if said else ''}"
                         f"{': ' + advice if advice else ''}")


def fs_messages(fsfd: int) -> list[str]:
    """The messages the kernel left on an fs context ("e overlay: ..." for an error; w, i for less),
    one per read until ENODATA; each as the kernel wrote it, without the level letter."""
    out = []
    for _ in range(32):  # the kernel keeps at most 8
        try:
            data = os.read(fsfd, 1024)
        except OSError:
            break
        if not data:
            break
        text = data.decode(errors="replace").strip()
        out.append(text[2:] if text[1:2] == " " and text[:1] in "ewi" else text)
    return out


# Filesystems overlayfs cannot take as upper (and work) dir, by statfs f_type (linux/magic.h).
_NOT_UPPER = {0x794C7630: "overlayfs", 0x6969: "NFS", 0x4D44: "vfat", 0x65735546: "a FUSE filesystem",
              0xFF534D42: "CIFS/SMB", 0x517B: "SMB", 0x73717368: "squashfs", 0x9660: "iso9660"}
UPPER_ADVICE = ("keep the data dir on a local filesystem overlayfs can write to (ext4, xfs, btrfs, tmpfs), "
                "not on NFS, vfat, FUSE or another overlay")


def fs_type(fd: int) -> int:
    """statfs f_type of the filesystem `fd` lies on (the first field of struct statfs, a long)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux
    check(libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


def _advice(key: str, fd: int | None) -> str:
    if key not in ("upperdir", "workdir"):
        return ""
    name = None
    if fd is not None:
        try:
            name = _NOT_UPPER.get(fs_type(fd))
        except OSError:
            pass
    return f"the {key} is on {name}: {UPPER_ADVICE}" if name else ""


def _fsconfig(fsfd: int, cmd: int, key: str | None, value: str | None, aux: int, target: str,
              call: str = "fsconfig", advice: str = "") -> None:
    try:
        syscall(nr.FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(cmd), _b(key), _b(value), ctypes.c_int(aux),
                call=call, target=target)
    except SyscallError as e:
        raise KernelSaid(e.errno or 0, call, target, fs_messages(fsfd), advice) from None


def fsconfig_string(fsfd: int, key: str, value: str, what: str) -> None:
    _fsconfig(fsfd, FSCONFIG_SET_STRING, key, value, 0, f"{what} {key}={value}")


def fsconfig_flag(fsfd: int, key: str, what: str) -> None:
    _fsconfig(fsfd, FSCONFIG_SET_FLAG, key, None, 0, f"{what} {key}")


def fsconfig_fd(fsfd: int, key: str, fd: int, what: str) -> None:
    _fsconfig(fsfd, FSCONFIG_SET_FD, key, None, fd, f"{what} {key}", advice=_advice(key, fd))


def fsconfig_fd_path(fsfd: int, key: str, fd: int, what: str) -> None:
    """fsconfig_fd for keys that take no fds yet (overlayfs layers before 6.13): `fd` as its
    /proc/self/fd/N string, with the same advice on a refusal."""
    path = fd_path(fd)
    _fsconfig(fsfd, FSCONFIG_SET_STRING, key, path, 0, f"{what} {key}={path}", advice=_advice(key, fd))


def fd_path(fd: int) -> str:
    """/proc/self/fd/N: a path string the kernel follows (magic link) to exactly what `fd` holds,
    resolving no name again; for fsconfig keys that take no fds (overlayfs before 6.13)."""
    return f"/proc/self/fd/{fd}"


def fsconfig_create(fsfd: int, what: str, advice: str = "", upper_work: tuple[int, int] | None = None) -> None:
    """Create the superblock; a refusal carries the kernel's own messages, and `advice` if it
    mentions the upper or work dir (overlayfs checks those here). Overlayfs before 6.5 parses its
    options itself and logs its reasons to dmesg only: a refusal without messages gets the advice
    for the `upper_work` dir fds when they lie on a filesystem overlayfs cannot write to."""
    try:
        _fsconfig(fsfd, FSCONFIG_CMD_CREATE, None, None, 0, what, call="fsconfig(create)")
    except KernelSaid as e:
        if not e.messages and upper_work:
            advice = advice or _advice("upperdir", upper_work[0]) or _advice("workdir", upper_work[1])
            if advice:
                raise KernelSaid(e.errno or 0, "fsconfig(create)", what, [], advice) from None
        if not any("upper" in m or "work" in m for m in e.messages):
            raise
        raise KernelSaid(e.errno or 0, "fsconfig(create)", what, e.messages, advice or UPPER_ADVICE) from None


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
