"""What the running kernel offers rocker: probed once at start, never assumed.

rockerd needs some kernel features outright (REQUIREMENTS: without one it
refuses to start, naming the feature and the Linux version that has it) and
takes a faster path where the kernel has one (FALLBACKS), like bubblewrap
and crun do. Each probe is a syscall or two on a throwaway object; all of
them together take well under a millisecond.

ROCKER_FORCE_FALLBACK=overlay-fd,tree-clone (or "all") makes rockerd take the
old path even where the kernel has the new one, so the host's tests cover
both; the forced names are recorded and shown by `rocker status`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass

from rocker_sys import fs, loop, ns
from rocker_sys import mount as m
from rocker_sys.libc import SyscallError

FORCE_ENV = "ROCKER_FORCE_FALLBACK"
P_PIDFD = 3


@dataclass(frozen=True)
class Fallback:
    name: str  # the ROCKER_FORCE_FALLBACK name
    since: str  # the Linux version that has the fast path
    fast: str  # the path taken when the kernel has it
    slow: str  # the path taken otherwise


OVERLAY_FD = Fallback("overlay-fd", "6.13", "overlay layers as fds (fsconfig lowerdir+ FSCONFIG_SET_FD)",
                      "overlay layers as /proc/self/fd/N strings")
TREE_CLONE = Fallback("tree-clone", "6.15",
                      "package and shared-overlay dirs cloned from detached mounts (open_tree)",
                      "a new mount of the package's shared superblock per rocker; shared-overlay dirs "
                      "cloned in a private mount namespace of a rockerd thread")
FALLBACKS = (OVERLAY_FD, TREE_CLONE)


class Unsupported(Exception):
    """A feature rockerd cannot work without is missing: one line, for the log and stderr."""


@dataclass(frozen=True)
class Kernel:
    release: str
    fast: frozenset[str]  # names of the FALLBACKS whose fast path is taken
    forced: frozenset[str]  # names forced to the fallback by ROCKER_FORCE_FALLBACK

    @property
    def overlay_fd(self) -> bool:
        return OVERLAY_FD.name in self.fast

    @property
    def tree_clone(self) -> bool:
        return TREE_CLONE.name in self.fast

    def paths(self) -> list[dict[str, object]]:
        """One entry per feature with two paths: which one rockerd takes, and why."""
        return [{"feature": f.name, "fast": f.name in self.fast, "forced": f.name in self.forced,
                 "path": f.fast if f.name in self.fast else f.slow, "fast_since": f.since} for f in FALLBACKS]

    def summary(self) -> str:
        parts = []
        for p in self.paths():
            how = "fast" if p["fast"] else "forced fallback" if p["forced"] else f"fallback, needs {p['fast_since']}"
            parts.append(f"{p['feature']}: {p['path']} ({how})")
        return f"kernel {self.release}: " + "; ".join(parts)


# -- probes ------------------------------------------------------------------------------------

def _tmpfs() -> int:
    """A tiny detached tmpfs with a dir `d` in it (the new mount API itself, Linux 5.2)."""
    fsfd = m.fsopen("tmpfs")
    try:
        m.fsconfig_string(fsfd, "size", "64k", "probe tmpfs")
        m.fsconfig_create(fsfd, "probe tmpfs")
        mfd = m.fsmount(fsfd, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOEXEC, "probe tmpfs")
    finally:
        os.close(fsfd)
    os.mkdir("d", 0o700, dir_fd=mfd)
    return mfd


def _has_overlay_fd(mfd: int) -> bool:
    """fsconfig(FSCONFIG_SET_FD, "lowerdir+") on a context that is never created."""
    fsfd = m.fsopen("overlay")
    try:
        m.fsconfig_fd(fsfd, "lowerdir+", mfd, "probe overlay")
        return True
    except SyscallError:  # EOPNOTSUPP before 6.5, EINVAL until 6.13
        return False
    finally:
        os.close(fsfd)


def _has_tree_clone(mfd: int) -> bool:
    """open_tree(OPEN_TREE_CLONE) of a detached mount and of a dir inside one (both 6.15)."""
    try:
        os.close(m.clone_tree(mfd, "probe tmpfs"))
        os.close(m.clone_subdir(mfd, "d", "probe tmpfs/d"))
        return True
    except SyscallError:  # EINVAL: not from a detached mount
        return False


def _fs(name: str) -> Callable[[], None]:
    def probe() -> None:
        os.close(m.fsopen(name))
    return probe


def _namespaces() -> None:
    for n in ("user", "mnt", "pid", "uts", "ipc", "net"):
        os.stat(f"/proc/self/ns/{n}")
    with open("/proc/sys/user/max_user_namespaces") as f:
        if int(f.read()) <= 0:
            raise OSError(errno.ENOSPC, "user.max_user_namespaces is 0")


def _pidfds() -> None:
    pidfd = ns.pidfd_open(os.getpid())
    try:
        ns.pidfd_send_signal(pidfd, 0)
        try:
            os.waitid(P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass  # ECHILD: P_PIDFD is known; we are not our own child
    finally:
        os.close(pidfd)


def _openat2() -> None:
    os.close(fs.open_nofollow("/", fs.O_PATH_DIR))


def _close_range_cloexec() -> None:
    ns.close_range(0x7FFFFFFF, 0xFFFFFFFF, ns.CLOSE_RANGE_CLOEXEC)  # an empty range: only the flag is tried


def _loop_control() -> None:
    os.close(os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC))


def _loop_configure() -> None:
    """LOOP_CONFIGURE with no backing file: EBADF where the ioctl exists, EINVAL where not."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        n = fcntl.ioctl(ctl, loop.LOOP_CTL_GET_FREE)
    finally:
        os.close(ctl)
    lfd = os.open(f"/dev/loop{n}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        cfg = loop._LoopConfig(fd=0xFFFFFFFF)
        fcntl.ioctl(lfd, loop.LOOP_CONFIGURE, cfg)
    except OSError as e:
        if e.errno not in (errno.EBADF, errno.EBUSY):
            raise
    finally:
        os.close(lfd)


# (what, Linux version that has it, probe): each raises OSError when the feature is missing
REQUIREMENTS: tuple[tuple[str, str, Callable[[], None]], ...] = (
    ("user, mount, PID, UTS, IPC and network namespaces", "3.8", _namespaces),
    ("the new mount API (fsopen, fsconfig, fsmount, move_mount)", "5.2", lambda: os.close(_tmpfs())),
    ("pidfds (pidfd_open, pidfd_send_signal, waitid P_PIDFD)", "5.4", _pidfds),
    ("openat2 (RESOLVE_NO_SYMLINKS)", "5.6", _openat2),
    ("loop devices (/dev/loop-control; modprobe loop)", "3.1", _loop_control),
    ("LOOP_CONFIGURE", "5.8", _loop_configure),
    ("close_range(CLOSE_RANGE_CLOEXEC)", "5.11", _close_range_cloexec),
    ("overlayfs through fsopen (modprobe overlay)", "5.2", _fs("overlay")),
    ("squashfs through fsopen (modprobe squashfs)", "5.2", _fs("squashfs")),
)
MINIMUM = max((since for _, since, _ in REQUIREMENTS), key=lambda v: tuple(int(x) for x in v.split(".")))


def parse_force(value: str | None) -> frozenset[str]:
    names = {f.name for f in FALLBACKS}
    got = {w.strip() for w in (value or "").split(",") if w.strip()}
    if "all" in got:
        return frozenset(names)
    unknown = got - names
    if unknown:
        raise Unsupported(f"{FORCE_ENV}: unknown fallback {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(names))}, all)")
    return frozenset(got)


def check_requirements() -> None:
    release = os.uname().release
    for what, since, probe in REQUIREMENTS:
        try:
            probe()
        except OSError as e:
            raise Unsupported(f"this kernel ({release}) lacks {what}, which rockerd needs (Linux {since} has it): "
                              f"{e.strerror or e}") from None


def probe(force: str | None = None) -> Kernel:
    """The requirements (Unsupported if one is missing), then which fast paths this kernel has."""
    forced = parse_force(force)
    check_requirements()
    mfd = _tmpfs()
    try:
        have = {OVERLAY_FD.name: _has_overlay_fd(mfd), TREE_CLONE.name: _has_tree_clone(mfd)}
    finally:
        os.close(mfd)
    fast = frozenset(n for n, ok in have.items() if ok and n not in forced)
    return Kernel(os.uname().release, fast, forced)


_current: Kernel | None = None


def set_current(k: Kernel) -> None:
    global _current
    _current = k


def current() -> Kernel:
    """The paths chosen at start (main.py); probed here on first use by code run without rockerd's main."""
    global _current
    if _current is None:
        _current = probe(os.environ.get(FORCE_ENV))
    return _current
