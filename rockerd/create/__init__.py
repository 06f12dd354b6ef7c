"""Building a rocker: the guard started in its namespaces while the daemon builds the mounts.

    spawn thread:  rocker_spawn: CLONE_VM child under the app's uid; we write its uid/gid
                   maps; it execs the C guard (--setup: / rprivate, /proc, hostname)
    open thread:   the package, opened as the caller (pkgopen.py: never on the loop)
    loop thread:   host steps (dirs, loop+squashfs, overlays: detached mounts)
    then:          the mounts to the guard over its status socket (it attaches them), while
                   we open its ns fds and bring lo up; wait (asynchronously) for ready
"""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rocker_sys.libc import SyscallError

from ..policy import Peer
from ..request import RockerRequestModel
from . import pkgopen
from .host import HostContext, host_steps, package_steps
from .net import loopback_up
from .packages import PackageCache, PackageKey
from .spawn import Spawned, reap, send_mounts, start_guard, wait_ready
from .steps import BuildError, as_build_error, run_steps, undo_steps
from .workslots import WorkSlots

__all__ = ["NS_NAMES", "BuildError", "Built", "PackageCache", "PackageKey", "WorkSlots", "build_rocker"]

# setns order for entering: user first, so the caller holds the rocker's
# capabilities when it joins the namespaces that user namespace owns
NS_NAMES = ("user", "mnt", "pid", "net", "uts", "ipc")


@dataclass
class Built:
    pid: int
    pidfd: int
    ns_fds: dict[str, int]
    pkg_key: PackageKey  # release it in the PackageCache when the rocker ends
    work_slot: int  # give it back to the WorkSlots when the rocker ends


_spawner: ThreadPoolExecutor | None = None
SPAWN_THREADS = 2


def _spawn_pool() -> ThreadPoolExecutor:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="rockerd-spawn")
    return _spawner


async def build_rocker(req: RockerRequestModel, name: str, *, caller: Peer | None, packages: PackageCache,
                       slots: WorkSlots, guard_fd: int, first_entry_timeout: float = 10.0,
                       ready_timeout: float = 5.0) -> Built:
    """Build one rocker or undo everything and raise BuildError naming the failed step.

    The guard is started on a worker thread while this one builds the mounts: the clone into
    six new namespaces is kernel work (the C call releases the GIL), and so are the mounts.
    (Whole builds on worker threads were measured to lose at concurrency 2: the GIL handoffs
    between their many syscalls cost more than the overlap gained. One C call does not.)
    """
    loop = asyncio.get_running_loop()
    starting = loop.run_in_executor(_spawn_pool(), start_guard, name, req.uid, req.gid, guard_fd,
                                    first_entry_timeout)
    ctx = HostContext(req, name, caller, packages, slots)
    dirs, package = host_steps(), package_steps()
    steps = [*dirs, *package]
    try:
        opening = pkgopen.start_open(req.app_pkg_path, caller, req.app_pkg_sha256)  # off the loop, meanwhile
        try:
            run_steps(dirs, ctx)  # undoes itself when it fails
        except BaseException:
            pkgopen.abandon(opening)
            raise
        try:
            ctx.pkg_fd = await pkgopen.opened(opening, req.app_pkg_path, pkgopen.deadline(req.app_pkg_sha256))
            run_steps(package, ctx)
        except BaseException:
            undo_steps(dirs, ctx)
            raise
    except BaseException:
        ctx.close_fds()
        await _discard_guard(starting)
        raise
    try:
        spawned, status = await asyncio.shield(starting)
    except BaseException as e:
        if isinstance(e, asyncio.CancelledError):
            starting.add_done_callback(_reap_late)
        ctx.close_fds()
        undo_steps(steps, ctx)
        if isinstance(e, Exception):
            raise as_build_error("start guard", e) from e
        raise
    ns_fds: dict[str, int] = {}
    stage = "pass the mounts to the guard"
    try:
        send_mounts(status, ctx.mounts)
        ctx.close_fds()  # the guard has its own now; ours would keep the mounts alive
        stage = "start guard"
        ns_fds = open_ns_fds(spawned.pid)  # while the guard attaches them
        stage = "bring lo up"
        loopback_up(ns_fds["net"], req.uid)
        stage = "wait for guard"
        await wait_ready(spawned, status.detach(), ready_timeout)  # it closes the fd
    except BaseException as e:
        reap(spawned)
        status.close()  # a no-op once detached
        for fd in ns_fds.values():
            os.close(fd)
        ctx.close_fds()
        undo_steps(steps, ctx)
        if isinstance(e, Exception):
            raise as_build_error(stage, e) from e
        raise
    assert ctx.pkg_key is not None and ctx.work_slot is not None
    return Built(spawned.pid, spawned.pidfd, ns_fds, ctx.pkg_key, ctx.work_slot)


async def _discard_guard(starting: asyncio.Future[tuple[Spawned, socket.socket]]) -> None:
    """Reap a guard that will not be used before the caller hears of the failure: until it is
    gone, its mount namespace holds a copy of every host mount (an umount of one would say EBUSY)."""
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_reap_late)
        raise
    except Exception:
        return  # no guard was started
    _reap_late(starting)


def _reap_late(f: asyncio.Future[tuple[Spawned, socket.socket]]) -> None:
    """Reap the guard a finished start gave, if it gave one."""
    if not f.cancelled() and f.exception() is None:
        spawned, status = f.result()
        reap(spawned)
        status.close()


def open_ns_fds(pid: int) -> dict[str, int]:
    """The guard is our unreaped child, so its PID cannot have been reused."""
    fds: dict[str, int] = {}
    try:
        for n in NS_NAMES:
            path = f"/proc/{pid}/ns/{n}"
            try:
                fds[n] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SyscallError(e.errno or 0, "open", path) from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds
