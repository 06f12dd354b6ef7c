"""Symlink-proof path walking: open once, check the open file, act on the fd.

A path a caller controls can be swapped for a symlink between a check and
its use; resolving with openat2(RESOLVE_NO_SYMLINKS) and working relative to
the resulting fds closes that window.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil

from . import nr
from .libc import SyscallError, syscall

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_nofollow(path: str, flags: int, dir_fd: int = -100, *, same_mount: bool = False) -> int:
    """Open `path` refusing every symlink on the way (ELOOP if there is one) and,
    with `same_mount`, every mount crossed from `dir_fd` (EXDEV)."""
    resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (RESOLVE_NO_XDEV if same_mount else 0)
    how = _OpenHow(flags=flags | os.O_CLOEXEC, mode=0, resolve=resolve)
    return syscall(nr.OPENAT2, ctypes.c_int(dir_fd), path.encode(), ctypes.byref(how),
                   ctypes.c_size_t(ctypes.sizeof(how)), call="openat2", target=path)


def components(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def ensure_dir(path: str, *, create: bool, final_mode: int = 0o755, final_owner: tuple[int, int] | None = None,
               parent_owner: tuple[int, int] = (0, 0),
               mirror: tuple[str, str] | None = None) -> tuple[int, list[str]]:
    """Open directory `path` as an O_PATH fd, creating missing components if `create`.

    Returns the fd and the paths it created (deepest last), for undo. Created
    parents get mode 0755 and `parent_owner`; the final component gets
    `final_mode` and `final_owner`. With `mirror=(under, host)`, a component
    created below `under` copies owner and mode of the matching path below
    `host` instead (overlay upper dirs, so host permissions stay in force).
    """
    if path.startswith("/"):
        try:  # the usual case, an existing dir: one openat2 checks every component just the same
            return open_nofollow(path, O_PATH_DIR), []
        except SyscallError:
            pass  # walk it, to create what is missing or to name the component that fails
    created: list[str] = []
    fd = os.open("/", O_PATH_DIR)
    try:
        parts = components(path)
        for i, name in enumerate(parts):
            here = "/" + "/".join(parts[: i + 1])
            try:
                nfd = open_nofollow(name, O_PATH_DIR, dir_fd=fd)
            except SyscallError as e:
                if e.errno != errno.ENOENT or not create:
                    raise SyscallError(e.errno or errno.EIO, "openat2", here) from None
                last = i == len(parts) - 1
                mode, owner = (final_mode, final_owner or parent_owner) if last else (0o755, parent_owner)
                if mirror is not None and here.startswith(mirror[0] + "/"):
                    st = os.stat(mirror[1].rstrip("/") + here[len(mirror[0]):], follow_symlinks=False)
                    mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # raced with a concurrent build of the same layout: fine
                else:
                    created.append(here)
                    os.chown(name, owner[0], owner[1], dir_fd=fd, follow_symlinks=False)
                    os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
                nfd = open_nofollow(name, O_PATH_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd, created
    except BaseException:
        os.close(fd)
        raise


def remove_created(paths: list[str]) -> None:
    """Undo ensure_dir: remove the directories it made, deepest first, only if empty."""
    for p in reversed(paths):
        try:
            os.rmdir(p)
        except OSError:
            pass


def remove_tree(path: str) -> None:
    """rm -r without following symlinks anywhere: walk from an fd of the parent opened nofollow."""
    parent, _, name = path.rpartition("/")
    try:
        pfd = open_nofollow(parent or "/", O_PATH_DIR)
    except OSError:
        return
    try:
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        shutil.rmtree(name, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
