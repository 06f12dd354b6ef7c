"""rockerd's cgroup subtree: one cgroup per rocker, made before its guard starts, removed after it ends.

Layout (docs/operations.md): v1: MOUNT/rocker/NAME in each of the memory, pids, cpu and cpuacct
hierarchies; v2: CGROUP/rocker/NAME, where CGROUP is --cgroup-parent (under systemd the delegated
rocker-cgroups.service, so that rockerd's own unit stays a leaf systemd can restart it into), else
rockerd's own cgroup, whose processes then move to CGROUP/daemon (the kernel lets a cgroup either
hold processes or hand controllers down, never both), or the root cgroup.

How the processes get in: each moves *itself*, before it runs anything, by writing "0" to a file of
the rocker's cgroup through an fd rockerd opened: the guard's child (rocker-spawn.c) and the app
(rocker-join.c), with the fds sent beside the Create reply. On v1 the file is `tasks`, not
cgroup.procs: the kernel moves a task that writes "0" there (only the calling thread, and both are
single-threaded fresh children) without cgroup_threadgroup_rwsem's write side, whose every take waits
for an RCU grace period (~10 ms after an idle moment; a pid written to either file, or "0" to
cgroup.procs, always takes it). v2 has no such file for a move across domains; there the guard is
cloned into its cgroup (clone3 CLONE_INTO_CGROUP, a read-side lock) where the kernel has it.
The kernel checks such a write against the credentials the fd was *opened* with, so rockerd opens
the app's as the app's uid (v1: a task may then be moved only if it runs as that uid, so the fd gives
a launcher no power over anyone else's processes); the file is that uid's for the open to work,
nothing else in the cgroup is (its limits stay root's). Every process the app forks starts where its
parent is.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field

from rocker_sys import proc
from rocker_sys.libc import SyscallError

from .detect import Hierarchy
from .limits import CPU_PERIOD_US, Limits

log = logging.getLogger("rockerd.cgroups")
BASE = "rocker"
DAEMON = "daemon"  # v2: rockerd's own leaf beside BASE
ROCKER_PREFIX = "rk-"
UNLIMITED_V1 = 1 << 62  # memory.limit_in_bytes above this reads as "no limit" (the kernel shows PAGE_COUNTER_MAX)


class CgroupError(Exception):
    """A cgroup step failed: which step, on which path, with which errno."""

    def __init__(self, step: str, err: int, path: str) -> None:
        super().__init__(step, err, path)
        self.step, self.errno, self.path = step, err, path

    def __str__(self) -> str:
        return f"{self.step} {self.path}: {os.strerror(self.errno)}"


def _write(path: str, text: str, step: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(step, e.errno or errno.EIO, path) from None
    try:
        os.write(fd, text.encode())
    except OSError as e:
        raise CgroupError(step, e.errno or errno.EIO, path) from None
    finally:
        os.close(fd)


def _or_max(value: int | None) -> str:
    return "max" if value is None else str(value)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


@dataclass
class RockerCgroup:
    """A rocker's cgroup dirs (one per hierarchy) and, while it is being created, the fds its
    processes join through (v1 `tasks`, v2 cgroup.procs: `join_file`) (closed once the Create reply carried them)."""

    name: str
    dirs: list[str]
    procs_fds: list[int] = field(default_factory=list)
    guard_fds: list[int] = field(default_factory=list)  # rockerd's, for the guard only
    oom_seen: int = 0
    guard_pid: int = 0  # for the journal's OOM events
    userns: tuple[int, int] | None = None  # v2: the guard's user namespace (st_dev, st_ino), the mover's check
    moved_by_rockerd: bool = False  # the app gets a channel to rockerd, not join fds (mover.py)

    def close_guard_fds(self) -> None:
        for fd in self.guard_fds:
            if fd not in self.procs_fds:
                os.close(fd)
        self.guard_fds = []

    def close_fds(self) -> None:
        self.close_guard_fds()
        for fd in self.procs_fds:
            os.close(fd)
        self.procs_fds = []


class CgroupTree:
    """The per-rocker cgroups under one hierarchy (detect.py); a no-op tree when it is "none"."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hier = hierarchy
        self.bases: dict[str, str] = {}  # v1: controller -> MOUNT/rocker; v2: "" -> CGROUP/rocker

    @property
    def enabled(self) -> bool:
        return self.hier.mode != "none"

    def setup(self) -> None:
        """Make the base dirs (and on v2 hand the controllers down to them); CgroupError if not possible."""
        if self.hier.mode == "v1":
            for ctrl, mount in self.hier.mounts.items():
                self.bases[ctrl] = self._mkdir_base(os.path.join(mount, BASE))
        elif self.hier.mode == "v2":
            mount, own = self.hier.mounts[""], self.hier.own
            if self.hier.parent:  # a delegated cgroup of its own (rocker-cgroups.service): rockerd stays put
                top = os.path.join(mount, self.hier.parent.lstrip("/")).rstrip("/")
            else:
                if os.path.basename(own) == DAEMON:  # already in our leaf (systemd's DelegateSubgroup=daemon)
                    own = os.path.dirname(own)
                top = os.path.join(mount, own.lstrip("/")).rstrip("/")
                if own != "/" and os.path.basename(self.hier.own) != DAEMON:  # processes live only in leaves
                    leaf = self._mkdir_base(os.path.join(top, DAEMON))
                    _write(os.path.join(leaf, "cgroup.procs"), "0", "move rockerd into")
            enable = " ".join("+" + c for c in ("memory", "pids", "cpu"))
            _write(os.path.join(top, "cgroup.subtree_control"), enable, "enable controllers in")
            base = self._mkdir_base(os.path.join(top, BASE))
            _write(os.path.join(base, "cgroup.subtree_control"), enable, "enable controllers in")
            self.bases[""] = base

    @staticmethod
    def _mkdir_base(path: str) -> str:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError("mkdir", e.errno or errno.EIO, path) from None
        return path

    def dirs_of(self, name: str) -> list[str]:
        return [os.path.join(b, name) for b in dict.fromkeys(self.bases.values())]

    def make(self, name: str, limits: Limits) -> None:
        """The cgroup `name` in every base with `limits` written; nothing of it left if that fails."""
        made: list[str] = []
        try:
            for d in self.dirs_of(name):
                try:
                    os.mkdir(d, 0o755)
                except OSError as e:
                    raise CgroupError("mkdir", e.errno or errno.EIO, d) from None
                made.append(d)
            self.apply(name, limits)
        except BaseException:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise

    def create(self, name: str, limits: Limits, uid: int, caller_uid: int,
               spare: Limits | None = None) -> RockerCgroup:
        """The rocker's cgroup with its limits, the guard's join fds (root's) and the app's:
        v1: opened as the app's `uid`; v2: root's, and only for a root caller (the kernel's v2
        check is write access to the common ancestor, whoever is moved: docs/security.md); a
        non-root caller's app asks rockerd to move it (mover.py). `spare`: the dirs exist already
        (a spare renamed into place, spares.py) with these limits; only the differences are written."""
        cg = RockerCgroup(name, self.dirs_of(name))
        if spare is None:
            self.make(name, limits)
        try:
            if spare is not None:
                self.apply(name, limits, spare)
            procs = [os.path.join(d, self.join_file) for d in cg.dirs]
            as_uid = self.hier.mode == "v1" and uid != 0
            if as_uid:
                for p in procs:
                    try:
                        os.chown(p, uid, -1)
                    except OSError as e:
                        raise CgroupError("chown", e.errno or errno.EIO, p) from None
            # the guard's are root's: until it execs, the guard runs as root with the app's euid,
            # which a v1 fd opened as the app's uid would refuse to move; v2: the dir it is cloned into
            cg.guard_fds = _open_procs(procs, 0) if self.hier.mode == "v1" else _open_dirs(cg.dirs)
            if as_uid:
                cg.procs_fds = _open_procs(procs, uid)
            elif self.hier.mode == "v1":
                cg.procs_fds = list(cg.guard_fds)
            elif caller_uid == 0:
                cg.procs_fds = _open_procs(procs, 0)
            else:
                cg.moved_by_rockerd = True  # v2, a non-root launcher: mover.py
        except BaseException:
            cg.close_fds()
            for d in reversed(cg.dirs):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise
        return cg

    def join_fds(self, name: str, uid: int, caller_uid: int) -> list[int]:
        """Join fds for one more app process of a live rocker (Join), on create's terms: v1 opened
        as the app's uid (its files were chowned at create), v2 root's for a root caller only."""
        procs = [os.path.join(d, self.join_file) for d in self.dirs_of(name)]
        if self.hier.mode == "v1":
            try:
                return _open_procs(procs, uid)
            except SyscallError as e:  # adopted from a rockerd that chowned cgroup.procs instead
                if e.errno != errno.EACCES:
                    raise
                return _open_procs([os.path.join(d, "cgroup.procs") for d in self.dirs_of(name)], uid)
        return _open_procs(procs, 0) if caller_uid == 0 else []

    @property
    def join_file(self) -> str:
        """The file a process writes "0" to, to move itself in: v1 `tasks`, which moves the writer
        (a single thread) without the global cgroup_threadgroup_rwsem write lock (and so without
        its RCU grace period); cgroup.procs on v2, which has no such file across domains."""
        return "tasks" if self.hier.mode == "v1" else "cgroup.procs"

    def procs_path(self, name: str) -> str:
        """v2: the rocker's one cgroup.procs (the mover's)."""
        return os.path.join(self.bases[""], name, "cgroup.procs")

    def memory_dir(self, name: str) -> str:
        """The rocker's cgroup dir that holds its memory controller's files."""
        return os.path.join(self.bases["memory" if self.hier.mode == "v1" else ""], name)

    def _path(self, name: str, ctrl: str, file: str) -> str:
        return os.path.join(self.bases[ctrl if self.hier.mode == "v1" else ""], name, file)

    def apply(self, name: str, lim: Limits, have: Limits | None = None) -> None:
        """Write the limits of `lim` that differ from `have` (what the dirs hold: nothing, or a spare's)."""
        v1, have = self.hier.mode == "v1", have or Limits()
        if lim.memory_max != have.memory_max:
            if v1:
                mem, sw = (self._path(name, "memory", f) for f in ("memory.limit_in_bytes",
                                                                   "memory.memsw.limit_in_bytes"))
                value = str(-1 if lim.memory_max is None else lim.memory_max)
                order = [(mem, "set memory limit"), (sw, "set memory+swap limit")]
                if have.memory_max is not None and (lim.memory_max is None or lim.memory_max > have.memory_max):
                    order.reverse()  # raised: memsw first (the kernel keeps memory <= memory+swap)
                for path, step in order:
                    if path != sw or os.path.exists(sw):
                        _write(path, value, step)
            else:
                _write(self._path(name, "", "memory.max"), _or_max(lim.memory_max), "set memory limit")
                sw = self._path(name, "", "memory.swap.max")
                if os.path.exists(sw):
                    _write(sw, "max" if lim.memory_max is None else "0", "set swap limit")
        if lim.pids_max != have.pids_max:
            _write(self._path(name, "pids", "pids.max"), _or_max(lim.pids_max), "set pids limit")
        if lim.cpu_max != have.cpu_max:
            quota = -1 if lim.cpu_max is None else max(1000, round(lim.cpu_max * CPU_PERIOD_US))
            if v1:
                _write(self._path(name, "cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US), "set cpu period")
                _write(self._path(name, "cpu", "cpu.cfs_quota_us"), str(quota), "set cpu quota")
            else:
                _write(self._path(name, "", "cpu.max"), f"{'max' if quota < 0 else quota} {CPU_PERIOD_US}",
                       "set cpu limit")

    def limits_of(self, name: str) -> Limits:
        """Read back a rocker's limits (for one adopted from an earlier rockerd)."""
        try:
            if self.hier.mode == "v1":
                mem = int(_read(self._path(name, "memory", "memory.limit_in_bytes")))
                quota = int(_read(self._path(name, "cpu", "cpu.cfs_quota_us")))
                period = int(_read(self._path(name, "cpu", "cpu.cfs_period_us")))
                memory = None if mem >= UNLIMITED_V1 else mem
            else:
                m = _read(self._path(name, "", "memory.max")).strip()
                memory = None if m == "max" else int(m)
                q, p = _read(self._path(name, "", "cpu.max")).split()
                quota, period = (-1 if q == "max" else int(q)), int(p)
            pids = _read(self._path(name, "pids", "pids.max")).strip()
        except (OSError, ValueError):
            return Limits()
        return Limits(memory, None if pids == "max" else int(pids), None if quota < 0 else quota / period)

    def empty(self, name: str) -> bool:
        """No process left in the rocker's cgroup (or no cgroup at all)."""
        for d in self.dirs_of(name):
            try:
                if _read(os.path.join(d, "cgroup.procs")).strip():
                    return False
            except OSError:
                continue
        return True

    def exists(self, name: str) -> bool:
        return bool(self.bases) and all(os.path.isdir(d) for d in self.dirs_of(name))

    def remove(self, name: str) -> bool:
        """Remove the rocker's cgroup; False if a dir is still busy (try again shortly).

        Nothing is killed here: the guard's end kills every process of its PID namespace, and what
        may still be in the cgroup is on its way out (a launcher's intermediate that joined just as
        the rocker ended: its clone of the app then fails, and it reports the rocker gone)."""
        done = True
        for d in self.dirs_of(name):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno != errno.EBUSY:
                    log.warning("cannot remove the cgroup %s of %s: %s", d, name, e.strerror)
                    continue
                done = False
        return done

    def leftovers(self) -> set[str]:
        """Names of the rocker cgroups under the bases (for adoption's sweep)."""
        names: set[str] = set()
        for b in dict.fromkeys(self.bases.values()):
            with contextlib.suppress(OSError):
                names.update(e for e in os.listdir(b) if e.startswith(ROCKER_PREFIX))
        return names


def _open_dirs(paths: list[str]) -> list[int]:
    """v2: the cgroup dir the guard is born in (rocker-spawn.c: clone3 CLONE_INTO_CGROUP)."""
    return _open_procs(paths, 0, os.O_RDONLY | os.O_DIRECTORY)


def _open_procs(paths: list[str], uid: int, flags: int = os.O_WRONLY) -> list[int]:
    """Open each join file for writing with this thread's euid switched to `uid` (the file's
    credentials are the opener's, and the kernel checks those at each write)."""
    fds: list[int] = []
    if uid:
        proc.set_thread_euid(uid)
    try:
        for p in paths:
            try:
                fds.append(os.open(p, flags | os.O_CLOEXEC))
            except OSError as e:
                raise SyscallError(e.errno or errno.EIO, "open", p) from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        if uid:
            proc.set_thread_euid(0)
    return fds
