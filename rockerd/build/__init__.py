"""Building a rocker: host steps in the daemon, then the guard started in its namespaces.

    validated request -> host steps (dirs, loop+squashfs, overlays: detached mounts)
                      -> rocker_spawn: CLONE_VM child under the app's uid, own uid/gid maps,
                         exec of the C guard                       (the loop waits for this)
                      -> guard --setup: rprivate, attach mounts, /proc, hostname -> ready
                         meanwhile rockerd: ns fds, lo up (rtnetlink into the new netns)
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


async def build_rocker(req: Request, name: str, *, caller: Peer | None, packages: PackageCache, slots: WorkSlots,
                       guard_fd: int, first_entry_timeout: float = 10.0, ready_timeout: float = 5.0) -> Built:
    """Build one rocker or undo everything and raise BuildError naming the failed step."""
    ctx = HostContext(req, name, caller, packages, slots)
    steps = host_steps(req)
    try:
        run_steps(steps, ctx)
    except BaseException:
        ctx.close_fds()
        raise
    spawned: Spawned | None = None
    ns_fds: dict[str, int] = {}
    stage = "start guard"
    try:
        try:
            spawned, status_r = start_guard(name, req.uid, req.gid, ctx.mounts, guard_fd, first_entry_timeout)
        finally:
            ctx.close_fds()  # the child has its own copies now; ours would keep the mounts alive
        try:  # while the guard sets up (on the other CPU, if there is one)
            ns_fds = open_ns_fds(spawned.pid)
            stage = "bring lo up"
            loopback_up(ns_fds["net"], req.uid)
        except BaseException:
            os.close(status_r)
            raise
        stage = "wait for guard"
        await wait_ready(spawned, status_r, ready_timeout)
        assert ctx.pkg_key is not None and ctx.work_slot is not None
        return Built(spawned.pid, spawned.pidfd, ns_fds, ctx.pkg_key, ctx.work_slot)
    except BaseException as e:
        if spawned is not None:
            reap(spawned)
        for fd in ns_fds.values():
            os.close(fd)
        ctx.close_fds()
        undo_steps(steps, ctx)
        if isinstance(e, Exception):
            raise as_build_error(stage, e) from e
        raise


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
