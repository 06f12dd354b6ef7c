"""Symlink-proof path walking: open once, check the open file, act on the fd.

A path a caller controls can be swapped for a symlink between a check and
its use; resolving with openat2(RESOLVE_NO_SYMLINKS) and working relative to
the resulting fds closes that window. A dir rockerd makes and then gives an
owner is made with mkdirat, opened beneath its parent's fd without following
anything, checked to be the dir just made, and changed through that fd only:
never chown/chmod by name, which a hard link swapped in between would redirect.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import threading
from dataclasses import dataclass

from . import nr
from .libc import SyscallError, syscall
from .proc import setfsuid

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
AT_FDCWD = -100
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # fchown/fchmod need more than O_PATH
SET_ID = 0o6000  # setuid, setgid: never copied onto a dir rockerd makes


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_nofollow(path: str, flags: int, dir_fd: int = AT_FDCWD, *, same_mount: bool = False,
                  beneath: bool = False) -> int:
    """Open `path` refusing every symlink on the way (ELOOP if there is one), with `same_mount`
    every mount crossed from `dir_fd` (EXDEV), with `beneath` any escape from `dir_fd` (EXDEV)."""
    resolve = (RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (RESOLVE_NO_XDEV if same_mount else 0)
               | (RESOLVE_BENEATH if beneath else 0))
    how = _OpenHow(flags=flags | os.O_CLOEXEC, mode=0, resolve=resolve)
    return syscall(nr.OPENAT2, ctypes.c_int(dir_fd), path.encode(), ctypes.byref(how),
                   ctypes.c_size_t(ctypes.sizeof(how)), call="openat2", target=path)


def open_following(path: str, flags: int) -> int:
    """Open `path` following symlinks as the calling thread's credentials allow, but never a /proc
    magic link (/proc/self/fd/N, /proc/PID/root: ELOOP), which would name the opener's own files."""
    how = _OpenHow(flags=flags | os.O_CLOEXEC, mode=0, resolve=RESOLVE_NO_MAGICLINKS)
    return syscall(nr.OPENAT2, ctypes.c_int(AT_FDCWD), path.encode(), ctypes.byref(how),
                   ctypes.c_size_t(ctypes.sizeof(how)), call="openat2", target=path)


def components(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


@dataclass(frozen=True)
class DirSpec:
    """What a dir rockerd makes looks like: its mode (set-id bits are dropped) and owner
    (None: whoever makes it, i.e. the credentials the calling thread acts with)."""

    mode: int
    owner: tuple[int, int] | None = None


def _fsuid() -> int:
    return setfsuid(0xFFFFFFFF)  # (uid_t)-1 changes nothing and returns the current fsuid


# Dirs this process is making right now: (parent dev, parent ino, name) -> the maker's lock. A
# concurrent build of the same layout that finds such a dir waits for its maker to finish, so
# it cannot fill it before the maker's "is it the one I made, still empty" check (make_dir).
_making: dict[tuple[int, int, str], threading.Lock] = {}
_making_guard = threading.Lock()


def _wait_for_maker(parent_fd: int, name: str) -> None:
    st = os.fstat(parent_fd)
    lock = _making.get((st.st_dev, st.st_ino, name))
    if lock is not None:
        with lock:
            pass


def make_dir(parent_fd: int, name: str, spec: DirSpec, where: str) -> tuple[int, bool]:
    """The dir `name` right below `parent_fd` as an O_RDONLY fd, made to `spec` if missing.

    Returns (fd, made). A new dir is checked to be the one mkdirat just made (a dir cannot be
    hard-linked; one made by anyone else has another owner, and a non-empty one is not new)
    before its owner and mode are set on the fd. An existing dir is returned as it is: whether
    it will do is the caller's business; if this process is making it right now (another
    build of the same layout), only once its maker is done with it.
    """
    try:  # the usual case: it is there
        fd = open_nofollow(name, O_DIR, parent_fd, beneath=True)
    except SyscallError as e:
        if e.errno != errno.ENOENT:
            raise SyscallError(e.errno or errno.EIO, "openat2", where) from None
        return _make_new(parent_fd, name, spec, where)
    if _making:  # rare: only while some build of this process makes a dir
        _wait_for_maker(parent_fd, name)
    return fd, False


def _make_new(parent_fd: int, name: str, spec: DirSpec, where: str) -> tuple[int, bool]:
    st = os.fstat(parent_fd)
    key = (st.st_dev, st.st_ino, name)
    with _making_guard:
        lock = _making.get(key)
        mine = lock is None
        if mine:
            lock = _making[key] = threading.Lock()
    assert lock is not None
    try:
        with lock:
            return _make_locked(parent_fd, name, spec, where)
    finally:
        if mine:
            with _making_guard:
                del _making[key]


def _make_locked(parent_fd: int, name: str, spec: DirSpec, where: str) -> tuple[int, bool]:
    made = False
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        made = True
    except FileExistsError:
        pass  # raced with a concurrent build of the same layout (now done with it): fine
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO, "mkdirat", where) from None
    try:
        fd = open_nofollow(name, O_DIR, parent_fd, beneath=True)
    except SyscallError as e:
        raise SyscallError(e.errno or errno.EIO, "openat2", where) from None
    try:
        if made:
            st = os.fstat(fd)
            if st.st_uid != _fsuid() or st.st_nlink != 2:
                raise SyscallError(errno.EEXIST, "mkdirat", f"{where}: replaced while being made")
            if spec.owner is not None:
                os.fchown(fd, *spec.owner)
            os.fchmod(fd, spec.mode & ~SET_ID)
    except BaseException:
        os.close(fd)
        raise
    return fd, made


def ensure_dir(path: str, *, create: bool, spec: DirSpec = DirSpec(0o755), parents: DirSpec = DirSpec(0o755),
               dir_fd: int = AT_FDCWD) -> tuple[int, list[str]]:
    """Open directory `path` (absolute, or relative to and beneath `dir_fd`), creating missing
    components if `create`: parents to `parents`, the last one to `spec` (see make_dir).

    Returns the fd and the paths it created (deepest last, relative to `dir_fd` as `path` is),
    for undo. Nothing is resolved by name twice: each component is opened beneath the fd of
    the one before, so a symlink or rename elsewhere cannot send the walk anywhere else.
    """
    beneath = dir_fd != AT_FDCWD
    try:  # the usual case, an existing dir: one openat2 checks every component just the same
        fd = open_nofollow(path, O_PATH_DIR, dir_fd, beneath=beneath)
        if not _making:  # checked after the open (a maker registers before its mkdir)
            return fd, []
        os.close(fd)  # a build of this process is making a dir: the walk waits for its maker
    except SyscallError:
        pass  # walk it, to create what is missing or to name the component that fails
    created: list[str] = []
    lead = "/" if path.startswith("/") else ""
    fd = os.open("/", O_PATH_DIR) if lead else os.dup(dir_fd)
    try:
        parts = components(path)
        for i, name in enumerate(parts):
            here = lead + "/".join(parts[: i + 1])
            try:
                nfd = open_nofollow(name, O_PATH_DIR, dir_fd=fd, beneath=True)
                if _making:  # found while another build makes it: not ours to fill before its check
                    _wait_for_maker(fd, name)
            except SyscallError as e:
                if e.errno != errno.ENOENT or not create:
                    raise SyscallError(e.errno or errno.EIO, "openat2", here) from None
                nfd, made = make_dir(fd, name, spec if i == len(parts) - 1 else parents, here)
                if made:
                    created.append(here)
            os.close(fd)
            fd = nfd
        return fd, created
    except BaseException:
        os.close(fd)
        raise


def remove_created(paths: list[str], dir_fd: int = AT_FDCWD) -> None:
    """Undo ensure_dir: remove the directories it made, deepest first, only if empty; each is
    removed relative to its parent opened without symlinks, never by a name resolved afresh."""
    for p in reversed(paths):
        parent, _, name = p.rpartition("/")
        try:
            pfd = open_nofollow(parent or ("/" if p.startswith("/") else "."), O_PATH_DIR, dir_fd,
                                beneath=dir_fd != AT_FDCWD)
        except OSError:
            continue
        try:
            os.rmdir(name, dir_fd=pfd)
        except OSError:
            pass
        finally:
            os.close(pfd)


def remove_tree(path: str, dir_fd: int = AT_FDCWD) -> None:
    """rm -r without following symlinks anywhere: walk from an fd of the parent opened nofollow
    (shutil's fd walk opens each entry O_NOFOLLOW beneath the one before)."""
    parent, _, name = path.rpartition("/")
    try:
        pfd = open_nofollow(parent or ("/" if path.startswith("/") else "."), O_PATH_DIR, dir_fd,
                            beneath=dir_fd != AT_FDCWD)
    except OSError:
        return
    try:
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    except OSError:
        return
    finally:
        os.close(pfd)
    try:
        shutil.rmtree(name, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
