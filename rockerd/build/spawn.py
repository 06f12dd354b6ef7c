"""Clone the guard into its namespaces, owned by the app's uid, and wait until it is ready.

The user namespace is created with the app's uid as effective uid, so it is
owned by that uid: the app's own (non-root) launcher may then setns into it,
and every other namespace of the rocker belongs to it. Mounts that need host
privileges were built before the clone and travel into the child as fds.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import signal
from dataclasses import dataclass

from rocker_client._sys import ns
from rocker_client._sys.libc import syscall
from rocker_client._sys.nr import CLONE

from .inside import InsidePlan, child_main
from .steps import BuildError

READY = b"R"


@dataclass
class Spawned:
    pid: int
    pidfd: int


def _clone_as(uid: int, gid: int) -> tuple[int, int]:
    """clone(2) into new namespaces with euid/egid temporarily the app's; returns (pid, pidfd).

    Returns (0, -1) in the child, which must branch off at once: nothing of
    the daemon's (no finally, no except) may run there.
    """
    pidfd = ctypes.c_int(-1)
    flags = ns.ROCKER_NS | ns.CLONE_PIDFD | signal.SIGCHLD
    switched = uid != 0 or gid != 0
    if switched:
        os.setegid(gid)
        os.seteuid(uid)
    try:
        pid = syscall(CLONE, ctypes.c_ulong(flags), None, ctypes.byref(pidfd), None, None, call="clone")
    except BaseException:
        _restore_ids(switched)
        raise
    if pid == 0:
        return 0, -1
    _restore_ids(switched)
    return pid, pidfd.value


def _restore_ids(switched: bool) -> None:
    if switched:
        os.seteuid(0)
        os.setegid(0)


def _write_maps(pid: int, uid: int, gid: int) -> None:
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def start_guard(name: str, uid: int, gid: int, mounts: list[tuple[str, int]], guard_fd: int,
                first_entry_timeout: float) -> tuple[Spawned, int]:
    """Clone the child, map its ids and let it go; returns it and the status pipe's read end."""
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    st_r, st_w = os.pipe2(os.O_CLOEXEC)
    plan = InsidePlan(name, mounts, guard_fd, go_r, go_w, st_r, st_w, first_entry_timeout)
    try:
        pid, pidfd = _clone_as(uid, gid)
    except BaseException:
        for fd in (go_r, go_w, st_r, st_w):
            os.close(fd)
        raise
    if pid == 0:
        child_main(plan)  # never returns
    os.close(go_r)
    os.close(st_w)
    spawned = Spawned(pid, pidfd)
    try:
        _write_maps(pid, uid, gid)
        os.write(go_w, b"G")
    except BaseException as e:
        os.close(go_w)  # EOF: the child gives up by itself
        os.close(st_r)
        reap(spawned)
        raise BuildError("write uid/gid maps", getattr(e, "errno", None) or errno.EIO, str(e)) from e
    os.close(go_w)
    return spawned, st_r


async def wait_ready(spawned: Spawned, status_r: int, timeout: float) -> None:
    """Wait for the guard's ready byte, or the child's error report, or its death."""
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
        return
    reap(spawned)
    if data:
        rep = json.loads(data)
        raise BuildError(rep["step"], rep["errno"], rep["reason"])
    raise BuildError("start guard", errno.ECHILD, "the guard exited during setup")


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
    os.close(spawned.pidfd)
    spawned.pidfd = -1
