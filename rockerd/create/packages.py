"""One squashfs mount per package, shared by every live rocker of it.

Mounting a package once and giving each rocker a clone of that mount
(open_tree) skips the loop device and superblock set-up per rocker and,
more importantly, shares one page cache: a fresh superblock reads and
decompresses the app again on every start (snapd shares mounts the same
way). A package is keyed by the identity of the opened file (device, inode,
size, mtime), so a replaced file is a new package; the shared mount goes
when the last rocker holding a reference to it ends, and with it the loop
device (autoclear).

Before Linux 6.15 open_tree cannot clone a detached mount. There each
rocker gets a new mount of the package's loop device instead (named as
/proc/self/fd/N of the loop fd the cache holds): the kernel finds the
device's live superblock and reuses it, so the page cache is still shared,
and nothing is staged anywhere: the mounts are as independent as clones.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

from rocker_sys import loop
from rocker_sys import mount as m

from .. import kernel
from .steps import BuildError
from .warm import DEFAULT_BUDGET, Warmer

log = logging.getLogger("rockerd.packages")

SQUASHFS_MAGIC = b"hsqs"
PackageKey = tuple[int, int, int, int]


@dataclass
class _Shared:
    mfd: int
    refs: int
    lfd: int | None  # the loop device, kept where each rocker gets a new mount of it (no tree clone)
    warmer: Warmer | None = None


class PackageCache:
    def __init__(self, warm_budget: int = DEFAULT_BUDGET) -> None:
        self._mounts: dict[PackageKey, _Shared] = {}
        self.warm_budget = warm_budget  # bytes of a new mount's executables read ahead; 0: none

    def __len__(self) -> int:
        return len(self._mounts)

    def acquire(self, pkg_fd: int, path: str, step: str) -> tuple[PackageKey, int]:
        """A new detached clone of the package's shared mount (made on first use) and its key."""
        clone = kernel.current().tree_clone
        st = os.fstat(pkg_fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        shared = self._mounts.get(key)
        if shared is None:
            shared = self._mounts[key] = _Shared(*_mount_squashfs(pkg_fd, path, step, keep_loop=not clone))
            if self.warm_budget > 0:
                try:
                    shared.warmer = Warmer(shared.mfd, path, self.warm_budget)
                except (OSError, RuntimeError) as e:  # no fd or no thread: start cold
                    log.warning("cannot warm package %s: %s", path, e)
        try:
            if clone:
                mfd = m.clone_tree(shared.mfd, path)
            else:
                assert shared.lfd is not None
                mfd = _fsmount_squashfs(m.fd_path(shared.lfd), path)
        except BaseException:
            if not shared.refs:  # a mount made just now for nobody
                self._drop(key, shared)
            raise
        shared.refs += 1
        return key, mfd

    def release(self, key: PackageKey) -> None:
        shared = self._mounts.get(key)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs <= 0:
            self._drop(key, shared)

    def _drop(self, key: PackageKey, shared: _Shared) -> None:
        del self._mounts[key]
        if shared.warmer is not None:
            shared.warmer.stop()  # it closes its own fd of the mount within a chunk
        os.close(shared.mfd)  # unmounts (once a warmer is done); the loop device goes with it
        if shared.lfd is not None:
            os.close(shared.lfd)


def _mount_squashfs(pkg: int, path: str, step: str, keep_loop: bool) -> tuple[int, int, int | None]:
    """The package on an autoclear loop device, read-only, as a detached mount: (mount, 0 refs,
    the loop fd if `keep_loop`, else None: then the mount alone holds the device)."""
    if os.pread(pkg, 4, 0) != SQUASHFS_MAGIC:
        raise BuildError(step, errno.EINVAL, f"package {path} is not a squashfs image")
    lfd, dev = loop.attach_readonly(pkg, path)
    try:
        mfd = _fsmount_squashfs(dev, path)
    except BaseException:
        os.close(lfd)
        raise
    if keep_loop:
        return mfd, 0, lfd
    os.close(lfd)
    return mfd, 0, None


def _fsmount_squashfs(source: str, path: str) -> int:
    """A read-only, nosuid, nodev squashfs mount of loop device `source`; its superblock if one is live."""
    fsfd = m.fsopen("squashfs")
    try:
        m.fsconfig_string(fsfd, "source", source, path)
        m.fsconfig_flag(fsfd, "ro", path)
        m.fsconfig_create(fsfd, path)
        return m.fsmount(fsfd, m.MOUNT_ATTR_RDONLY | m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV, path)
    finally:
        os.close(fsfd)
