"""Start the guard in its new namespaces, owned by the app's uid, and wait until it is ready.

The user namespace is created with the app's uid as effective uid, so it is
owned by that uid: the app's own (non-root) launcher may then setns into it,
and every other namespace of the rocker belongs to it. Mounts that need host
privileges were built before, and travel into the guard as fds.

The start is librocker-spawn's rocker_spawn() (C, loaded once with ctypes): a
CLONE_VM child whose id maps we write, which brings lo up, then execs the
guard, which sets the rocker up from inside (`rocker-guard --setup`). A build
runs it on a thread of the library's own (`Starting`, rocker_spawn_start()),
which needs no Python lock, and learns of its end from an eventfd the loop
watches: the clone, the maps, the exec and the guard's setup all run while
the daemon goes on. Until the child has exec'd it runs on a stack of ours and
reads the spec we gave it: `Spawned.keep` holds them until the guard's ready
byte, or until the child is reaped.

What travels on the status socket (a SOCK_SEQPACKET pair), the guard's argv
and fds are the guard protocol, defined once in rockerd/guard/rocker-guard-proto.h
(read by ..guard.proto): the guard does what needs no mount first and gets the
mounts (their targets, then the fds) in one message, so rockerd can start the
guard before it builds the mounts; then "R" (ready), "E<errno> <step>" (the
child or the guard's setup failed at <step>), or EOF (the guard died).
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import errno
import os
import signal
import socket
from dataclasses import dataclass
from functools import cache

from rocker_sys import ns

from ..guard import proto, spawn_library
from .steps import BuildError

READY = proto.READY
FAILED = proto.FAILED
SEND_STEP = "pass the mounts to the guard"


class _Spec(ctypes.Structure):
    """struct rocker_spawn (rocker-spawn.c; tests/test_native_layout.py checks the layout)."""

    _fields_ = [
        ("ns_flags", ctypes.c_ulong),
        ("uid", ctypes.c_int),
        ("gid", ctypes.c_int),
        ("guard_fd", ctypes.c_int),
        ("status_fd", ctypes.c_int),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("stack", ctypes.c_void_p),
        ("stack_size", ctypes.c_size_t),
        ("cgroup_fds", ctypes.POINTER(ctypes.c_int)),
        ("n_cgroup_fds", ctypes.c_int),
    ]


class _Job(ctypes.Structure):
    """struct rocker_spawn_job (rocker-spawn.c): rocker_spawn_start's, filled in by its thread."""

    _fields_ = [
        ("spec", ctypes.POINTER(_Spec)),
        ("done_fd", ctypes.c_int),
        ("pid", ctypes.c_int),
        ("pidfd", ctypes.c_int),
    ]


STACK_SIZE = 64 * 1024


@cache
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(spawn_library(), use_errno=True)
    lib.rocker_spawn.argtypes = [ctypes.POINTER(_Spec), ctypes.POINTER(ctypes.c_int)]
    lib.rocker_spawn.restype = ctypes.c_int
    lib.rocker_spawn_start.argtypes = [ctypes.POINTER(_Job)]
    lib.rocker_spawn_start.restype = ctypes.c_int
    return lib


def load() -> None:
    """Load the library now (at daemon start), so a missing one fails there and not per rocker."""
    _library()


@dataclass
class Spawned:
    pid: int
    pidfd: int
    keep: object = None  # the child's stack and spec: alive until it has exec'd or is reaped


def _spec(name: str, uid: int, gid: int, guard_fd: int, first_entry_timeout: float, ns_flags: int,
          cgroup_fds: list[int] | tuple[int, ...], theirs: socket.socket) -> tuple[_Spec, tuple[object, ...]]:
    """The spec and what it points to (all of it must outlive the child's exec)."""
    argv_items = proto.guard_argv(name, first_entry_timeout)
    argv = (ctypes.c_char_p * (len(argv_items) + 1))(*argv_items, None)
    stack = ctypes.create_string_buffer(STACK_SIZE)
    cgroups = (ctypes.c_int * max(1, len(cgroup_fds)))(*cgroup_fds)  # the guard joins these before it runs
    spec = _Spec(ns_flags, uid, gid, guard_fd, theirs.fileno(), argv, ctypes.addressof(stack), STACK_SIZE,
                 cgroups, len(cgroup_fds))
    return spec, (stack, spec, argv, cgroups)


def _started(pid: int, pidfd: int, keep: object, ours: socket.socket) -> tuple[Spawned, socket.socket]:
    if pid < 0:
        ours.close()
        raise BuildError("start guard", -pid, f"clone: {os.strerror(-pid)}")
    return Spawned(pid, pidfd, keep), ours


def start_guard(name: str, uid: int, gid: int, guard_fd: int,
                first_entry_timeout: float, ns_flags: int = ns.ROCKER_NS,
                cgroup_fds: list[int] | tuple[int, ...] = ()) -> tuple[Spawned, socket.socket]:
    """Start the guard on this thread; returns it and our end of its status socket. Raises BuildError.

    Safe on a worker thread: the call holds no lock, and the C part releases the GIL."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        spec, keep = _spec(name, uid, gid, guard_fd, first_entry_timeout, ns_flags, cgroup_fds, theirs)
        pidfd = ctypes.c_int(-1)
        pid = _library().rocker_spawn(ctypes.byref(spec), ctypes.byref(pidfd))
    finally:
        theirs.close()  # the child has its own
    return _started(pid, pidfd.value, keep, ours)


class Starting:
    """A guard's start on a thread of the C library's own (rocker_spawn_start): `done_fd` (an
    eventfd) turns readable once it is over, then `result()` gives what start_guard gives.
    Until then this object holds everything the thread and the child read: keep it."""

    def __init__(self, name: str, uid: int, gid: int, guard_fd: int, first_entry_timeout: float,
                 ns_flags: int = ns.ROCKER_NS, cgroup_fds: list[int] | tuple[int, ...] = ()) -> None:
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._spec, self._keep = _spec(name, uid, gid, guard_fd, first_entry_timeout, ns_flags, cgroup_fds,
                                           self._theirs)
            self.done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            self._theirs.close()
            self._ours.close()
            raise
        self._job = _Job(ctypes.pointer(self._spec), self.done_fd, -errno.EINPROGRESS, -1)
        err = _library().rocker_spawn_start(ctypes.byref(self._job))
        if err < 0:
            os.close(self.done_fd)
            self._theirs.close()
            self._ours.close()
            raise BuildError("start guard", -err, f"thread for the clone: {os.strerror(-err)}")

    def result(self) -> tuple[Spawned, socket.socket]:
        """Once done_fd is readable (only then: the thread may still use what this holds). Raises BuildError."""
        os.close(self.done_fd)
        self._theirs.close()  # the child has its own
        return _started(self._job.pid, self._job.pidfd, self._keep, self._ours)


def send_mounts(status: socket.socket, mounts: list[tuple[str, int]]) -> None:
    """The targets, NUL-separated, with the detached mounts as SCM_RIGHTS, in attach order.

    If the guard is already gone, its report says why (not our EPIPE). More mounts or a longer
    target than the guard takes (rocker-guard-proto.h) are refused here, by name."""
    if len(mounts) > proto.MAX_MOUNTS:
        raise BuildError(SEND_STEP, errno.E2BIG, f"{len(mounts)} mounts, the guard takes {proto.MAX_MOUNTS}")
    targets = [t.encode() for t, _ in mounts]
    for t in targets:
        if len(t) >= proto.TARGET_MAX:
            raise BuildError(SEND_STEP, errno.ENAMETOOLONG, f"mount target of {len(t)} bytes: {t[:64]!r}...")
    data = b"\0".join(targets)
    try:
        status.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", (fd for _, fd in mounts)))])
    except OSError:
        try:
            report = status.recv(4096, socket.MSG_DONTWAIT)
        except OSError:
            report = b""
        if report[:1] == FAILED:
            raise parse_report(report) from None
        raise


async def wait_ready(spawned: Spawned, status_r: int, timeout: float) -> None:
    """Wait for the guard's ready byte, or a setup error report, or its death."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    chunks: list[bytes] = []

    def readable() -> None:
        try:
            data = os.read(status_r, 4096)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
            if chunks[0][:1] != READY:
                return  # an error report: read on to EOF
        if not fut.done():
            fut.set_result(b"".join(chunks))

    os.set_blocking(status_r, False)
    loop.add_reader(status_r, readable)
    try:
        data = await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        reap(spawned)
        raise BuildError("wait for guard", errno.ETIMEDOUT, f"guard not ready within {timeout:g}s") from None
    finally:
        loop.remove_reader(status_r)
        os.close(status_r)
    if data[:1] == READY:
        spawned.keep = None  # the guard runs its own image now
        return
    reap(spawned)
    if data[:1] == FAILED:
        raise parse_report(data)
    raise BuildError("start guard", errno.ECHILD, "the guard exited during setup")


def parse_report(data: bytes) -> BuildError:
    """"E<errno> <step>[: <detail>]" -> BuildError(step, errno, "<detail>: <strerror>")."""
    head, _, rest = data[1:].decode(errors="replace").partition(" ")
    err = int(head) if head.isdigit() else errno.EIO
    step, _, detail = rest.partition(": ")
    reason = f"{detail}: {os.strerror(err)}" if detail else os.strerror(err)
    return BuildError(step or "start guard", err, reason)


def reap(spawned: Spawned) -> None:
    """Kill a guard that will not be used and collect it; closes its pidfd. Idempotent."""
    if spawned.pidfd < 0:
        return
    try:
        ns.pidfd_send_signal(spawned.pidfd, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitid(os.P_PIDFD, spawned.pidfd, os.WEXITED)
    except ChildProcessError:
        pass
    spawned.keep = None  # dead: nothing of ours is in use any more
    os.close(spawned.pidfd)
    spawned.pidfd = -1
