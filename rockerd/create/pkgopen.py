"""Opening the package a caller names, without letting it stall the daemon.

The path is the caller's: it may name a FIFO (an O_RDONLY open of one waits
for a writer), a device, or lie on a slow NFS or FUSE mount. So the file is
opened O_PATH as the caller (which never blocks on what the file is), typed
with fstat, and only a regular file is reopened read-only, non-blocking,
through /proc/self/fd (the same inode: nothing can be swapped in between).

Symlinks on the way are followed as the caller (its fsuid, fsgid and groups:
the kernel checks every step of the walk, symlink targets included, with the
caller's rights, and fs.protected_symlinks applies to the caller), so
`app.squashfs -> app-2.3.squashfs` and Debian's `/lib -> usr/lib` work; /proc
magic links are not followed and files on procfs or sysfs are refused: those
would be rockerd's own (/proc/self is rockerd). A path that fails is walked
again one component at a time to say which component and why.
The whole open runs on a thread of its own with a deadline: the event loop
never waits for a path lookup.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor

from rocker_sys import fs, mount

from .. import policy
from . import pkgdigest
from .steps import BuildError, as_build_error

STEP = "mount package"
DEADLINE = 5.0  # seconds an open may take (a hung lookup keeps only its own thread)
DIGEST_DEADLINE = 120.0  # seconds an open and a sha256 may take: 4 GiB at 35 MB/s
THREADS = 8  # opens at once; a ninth waits, within its own deadline

_pool: ThreadPoolExecutor | None = None


def open_package(path: str, caller: policy.Peer | None, sha256: str | None = None) -> int:
    """The package at `path` as an O_RDONLY|O_NONBLOCK fd, opened as the caller; refuses
    anything but a regular file before opening it for reading, and, when `sha256` is given,
    a file with other content (pkgdigest.py: hashed from this very fd)."""
    uid = caller.uid if caller is not None else 0
    with policy.acting_as(caller):
        try:
            ref = fs.open_following(path, os.O_PATH)
        except OSError as e:
            where = _failing_component(path, uid)
            if e.errno != errno.EACCES or policy.is_root(caller):
                why = f"{where} ({e.strerror})" if where else e.strerror
                raise BuildError(STEP, e.errno or errno.EIO, f"package {path}: {why}") from None
            raise policy.Denied(f"package {path} is not readable by uid {uid}: {where}") from None
        try:
            st = os.fstat(ref)
            if not stat.S_ISREG(st.st_mode):
                raise BuildError(STEP, errno.EINVAL, f"package {path} is not a regular file")
            pseudo = PSEUDO_FS.get(mount.fs_type(ref))
            if pseudo is not None:
                raise BuildError(STEP, errno.EINVAL, f"package {path} is on {pseudo}: its files are the kernel's "
                                 "(or rockerd's own), not a package")
            try:  # checks read permission as the caller, on the inode already opened
                fd = os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno != errno.EACCES or policy.is_root(caller):
                    raise BuildError(STEP, e.errno or errno.EIO, f"package {path}: {e.strerror}") from None
                raise policy.Denied(f"package {path} is not readable by uid {uid}") from None
        finally:
            os.close(ref)
    again = os.fstat(fd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # cannot happen: say so if it does
        os.close(fd)
        raise BuildError(STEP, errno.EIO, f"package {path} changed while being opened")
    if sha256 is not None:
        try:
            pkgdigest.verify(fd, path, sha256)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise as_build_error(STEP, e) from None
            raise
    return fd


PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs"}  # statfs f_type (linux/magic.h)


def _failing_component(path: str, uid: int) -> str:
    """The first prefix of `path` the caller (whose credentials this thread acts with) cannot open,
    and why, in words; "" if every prefix opens now."""
    parts = fs.components(path)
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        try:
            os.close(fs.open_following(prefix, os.O_PATH))
        except OSError as e:
            if e.errno == errno.ENOTDIR and i > 1:  # the one before is the file that is no dir
                prefix = "/" + "/".join(parts[:i - 1])
            return f"{prefix}: {_why(prefix, e.errno or 0, uid)}"
    return ""


def _why(prefix: str, err: int, uid: int) -> str:
    try:
        target = os.readlink(prefix)
    except OSError:
        target = None
    link = f"a symlink to {target}, " if target is not None else ""
    if err == errno.ENOENT:
        return f"{link}{'which does' if link else 'it does'} not exist"
    if err == errno.EACCES:
        where = "the dir it is in, or on a dir its target goes through" if link else "the dir it is in"
        return f"{link}uid {uid} may not look it up: no search permission on {where}"
    if err == errno.ELOOP:
        if target is not None and prefix.startswith("/proc/"):
            return f"{link}a /proc magic link, which rockerd does not follow"
        return f"{link}too many levels of symlinks"
    if err == errno.ENOTDIR:
        return f"{link}not a directory, but the path goes on below it"
    return f"{link}{os.strerror(err)}"


def deadline(sha256: str | None) -> float:
    """How long the open may take: a digest reads the whole file."""
    return DEADLINE if sha256 is None else DIGEST_DEADLINE


def start_open(path: str, caller: policy.Peer | None, sha256: str | None = None) -> Future[int]:
    """open_package on a worker thread, from now: the build goes on meanwhile on the loop."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="rockerd-open")
    if sha256 is None:  # the two-argument call, as before app_pkg_sha256
        return _pool.submit(open_package, path, caller)
    return _pool.submit(open_package, path, caller, sha256)


class Deferred(Future[int]):
    """An open that runs first on the thread of the build's dir steps (dirsteps.py), not on a thread
    of its own: it is a few syscalls, and two Python threads at once handed the GIL to each other at
    every one of them (~0.2 ms a build). Its deadline is then the dir steps'."""

    def __init__(self, path: str, caller: policy.Peer | None) -> None:
        super().__init__()
        self.path, self.caller = path, caller

    def run(self) -> None:
        """On the dir steps' thread, once (a retried job finds it done); nothing if it was abandoned."""
        if self.done() or not self.set_running_or_notify_cancel():
            return
        try:
            self.set_result(open_package(self.path, self.caller))
        except BaseException as e:
            self.set_exception(e)


async def opened(cf: Future[int], path: str, deadline: float = DEADLINE) -> int:
    """The fd `cf` gives, or BuildError(ETIMEDOUT) once `deadline` has passed (the fd it may still
    give is closed when it does)."""
    if cf.done():  # the usual case by the time the dirs are ready: no round trip through the loop
        return cf.result()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(cf), deadline)
    except (TimeoutError, asyncio.CancelledError) as e:
        abandon(cf)
        if isinstance(e, asyncio.CancelledError):
            raise
        raise BuildError(STEP, errno.ETIMEDOUT, f"package {path} did not open within {deadline:g} s") from None


async def open_package_off_loop(path: str, caller: policy.Peer | None, deadline: float = DEADLINE) -> int:
    return await opened(start_open(path, caller), path, deadline)


def abandon(cf: Future[int]) -> None:
    """Nobody will use what `cf` gives: close it when it comes (or now)."""
    if not cf.cancel():
        cf.add_done_callback(_close_late)


def _close_late(cf: Future[int]) -> None:
    if not cf.cancelled() and cf.exception() is None:
        os.close(cf.result())
