"""What the benchmark reads from the kernel: /proc, sysfs, pidfds and namespace file handles."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import select
import time
from collections.abc import Callable

_ROLLUP = re.compile(r"(\w+):\s+(\d+) kB")
_libc = ctypes.CDLL(None, use_errno=True)
AT_EMPTY_PATH = 0x1000


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in KiB ({} if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                m = _ROLLUP.match(line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, in seconds (/proc/PID/schedstat: ns precision; 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def slab_active(cache: str) -> int | None:
    """Active objects of a slab cache (/proc/slabinfo), e.g. net_namespace; None if unreadable."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith(cache + " "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f}


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `want` (capped by the hard limit); returns the new soft limit.

    The daemon we start inherits it: it holds about one pidfd per live rocker.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = max(soft, min(want, hard if hard != resource.RLIM_INFINITY else want))
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def wait_pidfd(pidfd: int, timeout: float) -> bool:
    """True once the process behind pidfd has exited (the pidfd polls readable)."""
    p = select.poll()  # not select(): pidfds of 1000 idle rockers go past FD_SETSIZE
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


def wait_all_pidfds(pidfds: list[int], timeout: float) -> tuple[float | None, int]:
    """Wait until every pidfd polls readable: (monotonic ms when the last one did, how many never did)."""
    p = select.poll()
    for fd in pidfds:
        p.register(fd, select.POLLIN)
    left, last = len(pidfds), None
    deadline = time.monotonic() + timeout
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0:
            break
        for fd, _ in p.poll(int(wait * 1000) + 1):
            p.unregister(fd)
            left -= 1
            last = time.monotonic_ns() / 1e6
    return last, left


def open_pidfd(pid: int) -> int | None:
    """A pidfd for pid, or None if it is already gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def exec_loop_device(pid: int, mount_point: str) -> str | None:
    """The loop device a process sees mounted at mount_point ("loop7"), from its mountinfo."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if fields[4] == mount_point and fields[sep + 2].startswith("/dev/loop"):
            return fields[sep + 2][len("/dev/"):]
    return None


def loop_backing(name: str) -> str | None:
    """The file a loop device is bound to, None when it is free."""
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def loops_backed_by(prefix: str) -> list[str]:
    """Attached loop devices whose backing file lies under prefix."""
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if name.startswith("loop"):
            b = loop_backing(name)
            if b is not None and b.startswith(prefix):
                out.append(f"/dev/{name} -> {b}")
    return out


def mounts_under(prefix: str) -> list[str]:
    """Mounts of our mount namespace whose mount point or source lies under prefix."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4].startswith(prefix) or any(x.startswith(prefix) for x in fields[5:]):
                out.append(line.strip())
    return out


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


class NsWatch:
    """Weak references to namespaces: nsfs file handles (Linux 6.18+).

    A handle does not keep its namespace alive; open_by_handle_at fails with
    ESTALE once the namespace is gone. On older kernels `supported` is False
    and the benchmark goes without this check.
    """

    def __init__(self) -> None:
        self._mount_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.supported = True
        try:
            self.handle_of(f"/proc/{os.getpid()}/ns/mnt")
        except OSError:
            self.supported = False

    def close(self) -> None:
        os.close(self._mount_fd)

    def handle_of(self, ns_path: str) -> _FileHandle:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            h = _FileHandle()
            h.handle_bytes = 128
            mount_id = ctypes.c_int()
            if _libc.name_to_handle_at(fd, b"", ctypes.byref(h), ctypes.byref(mount_id), AT_EMPTY_PATH) < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            return h
        finally:
            os.close(fd)

    def alive(self, h: _FileHandle) -> bool:
        fd = _libc.open_by_handle_at(self._mount_fd, ctypes.byref(h), os.O_RDONLY | os.O_CLOEXEC)
        if fd >= 0:
            os.close(fd)
            return True
        return ctypes.get_errno() not in (errno.ESTALE, errno.ENOENT, errno.ESRCH)


def poll_until(cond: Callable[[], bool], timeout: float, step: float = 0.0005) -> float | None:
    """Poll cond() until true; returns time.monotonic_ns()/1e6 at that moment, None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic_ns() / 1e6
        if time.monotonic() > deadline:
            return None
        time.sleep(step)
