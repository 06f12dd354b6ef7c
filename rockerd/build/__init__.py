"""Building a rocker: host steps in the daemon, then the guard started in its namespaces.

    host steps (dirs, loop+squashfs, overlays: detached mounts)
    -> rocker_spawn: CLONE_VM child under the app's uid; we write its uid/gid maps;
       it execs the C guard
    -> ns fds, lo up (rtnetlink into the new netns), while the guard (--setup) makes
       / rprivate, attaches the mounts, /proc, hostname
    -> wait (asynchronously) for the guard's ready byte
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rocker_client._sys.libc import SyscallError

from ..policy import Peer
from .host import HostContext, Request, host_steps
from .net import loopback_up
from .packages import PackageCache, PackageKey
from .spawn import Spawned, reap, start_guard, wait_ready
from .steps import BuildError, Step, as_build_error, run_steps, undo_steps
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


@dataclass
class _Started:
    """What the synchronous part leaves: a guard setting itself up."""
    ctx: HostContext
    steps: list[Step[HostContext]]
    spawned: Spawned
    status_r: int
    ns_fds: dict[str, int]

    def discard(self) -> None:
        reap(self.spawned)
        for fd in self.ns_fds.values():
            os.close(fd)
        self.ns_fds = {}
        undo_steps(self.steps, self.ctx)


def _start(req: Request, name: str, caller: Peer | None, packages: PackageCache, slots: WorkSlots, guard_fd: int,
           first_entry_timeout: float) -> _Started:
    """Host steps, the spawn, ns fds and lo: all of the build that blocks. Undoes itself on failure."""
    ctx = HostContext(req, name, caller, packages, slots)
    steps = host_steps(req)
    try:
        run_steps(steps, ctx)
    except BaseException:
        ctx.close_fds()
        raise
    spawned: Spawned | None = None
    status_r = -1
    ns_fds: dict[str, int] = {}
    stage = "start guard"
    try:
        try:
            spawned, status_r = start_guard(name, req.uid, req.gid, ctx.mounts, guard_fd, first_entry_timeout)
        finally:
            ctx.close_fds()  # the child has its own copies now; ours would keep the mounts alive
        # while the guard sets up (on the other CPU, if there is one)
        ns_fds = open_ns_fds(spawned.pid)
        stage = "bring lo up"
        loopback_up(ns_fds["net"], req.uid)
        return _Started(ctx, steps, spawned, status_r, ns_fds)
    except BaseException as e:
        if spawned is not None:
            reap(spawned)
        if status_r >= 0:
            os.close(status_r)
        for fd in ns_fds.values():
            os.close(fd)
        undo_steps(steps, ctx)
        if isinstance(e, Exception):
            raise as_build_error(stage, e) from e
        raise


async def build_rocker(req: Request, name: str, *, caller: Peer | None, packages: PackageCache, slots: WorkSlots,
                       guard_fd: int, first_entry_timeout: float = 10.0, ready_timeout: float = 5.0) -> Built:
    """Build one rocker or undo everything and raise BuildError naming the failed step."""
    # On the loop's thread: worker threads were measured to lose at concurrency 2 (the GIL
    # handoffs between their syscalls cost more than the overlap of kernel work gained).
    started = _start(req, name, caller, packages, slots, guard_fd, first_entry_timeout)
    try:
        await wait_ready(started.spawned, started.status_r, ready_timeout)
    except BaseException as e:
        started.discard()  # wait_ready closed the status pipe
        if isinstance(e, Exception):
            raise as_build_error("wait for guard", e) from e
        raise
    ctx = started.ctx
    assert ctx.pkg_key is not None and ctx.work_slot is not None
    return Built(started.spawned.pid, started.spawned.pidfd, started.ns_fds, ctx.pkg_key, ctx.work_slot)


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
