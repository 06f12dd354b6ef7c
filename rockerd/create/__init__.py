"""Building a rocker: the guard started in its namespaces while the daemon builds the mounts.

The build is one list of steps, STEPS, run in order by steps.run_steps; a failure anywhere
undoes what was done, in reverse, and names the failed step. Three run beside the loop:

    C thread:      rocker_spawn: CLONE_VM child under the app's uid; we write its uid/gid
                   maps; it brings lo up and execs the C guard (--setup: / rprivate, /proc, hostname)
    open thread:   the package, opened as the caller (pkgopen.py: never on the loop)
    loop thread:   host steps (dirs, loop+squashfs, overlays: detached mounts)
    then:          the mounts to the guard over its status socket (it attaches them), while
                   we open its ns fds; wait (asynchronously) for ready
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..policy import Peer
from ..request import RockerRequestModel
from .datashare import DataShares
from .dirsteps import HostDirs
from .handoff import (
    NS_NAMES,
    BuildContext,
    DropHostNet,
    GuardReady,
    GuardStart,
    GuardStarted,
    NetworkMounts,
    NetworkReady,
    OpenNamespaces,
    OpenPackage,
    PackageOpened,
    SendMounts,
    StartGuard,
)
from .host import (
    ClaimDataDir,
    EnsureExecAndDataDirs,
    MountOverlays,
    MountPackage,
    PrepareOverlayLayers,
    ShareOverlays,
    VerifyOverlayRoots,
)
from .packages import PackageCache, PackageKey
from .steps import BuildError, Step, run_steps
from .workslots import WorkSlots

if TYPE_CHECKING:
    from ..network import Network, Plan

__all__ = ["NS_NAMES", "STEPS", "BuildError", "Built", "DataShares", "PackageCache", "PackageKey", "WorkSlots",
           "build_rocker"]

# The build, in order: a new step is one line here (docs/architecture.md, "Create steps").
# A step that only starts work (StartGuard, OpenPackage) is awaited by a later one.
STEPS: tuple[Step[BuildContext], ...] = (
    StartGuard(),             # the clone, on a worker thread from now (handoff.py)
    OpenPackage(),            # the caller's package path, opened off the loop from now
    HostDirs(                 # dirsteps.py: these on a worker thread, with a deadline (a hung NFS/FUSE path)
        EnsureExecAndDataDirs(),  # host.py: exec and data dirs, opened as the caller
        ClaimDataDir(),           # datashare.py: join the data dir's live overlays, or start them
        PrepareOverlayLayers(),   # upper and work dirs below the data dir
        MountOverlays(),          # detached overlay mounts
        VerifyOverlayRoots(),
        ShareOverlays(),          # the first rocker's overlays staged, clones for each rocker
    ),
    PackageOpened(),          # waits for OpenPackage
    MountPackage(),           # a clone of the package's shared squashfs mount
    GuardStarted(),           # waits for StartGuard; undo reaps the guard
    NetworkMounts(),          # resolv.conf of a bridged rocker
    SendMounts(),             # the mounts to the guard, which attaches them; ours closed
    OpenNamespaces(),         # the guard's ns fds, for the reply
    DropHostNet(),            # host mode: the host's net fd dropped (lo: the guard's child brought it up)
    GuardReady(),             # the guard's "R" (or its "E<errno> <step>" report)
    NetworkReady(),           # waits for a bridged rocker's veth, address, route (StartGuard's job)
)


@dataclass
class Built:
    pid: int
    pidfd: int
    ns_fds: dict[str, int]
    pkg_key: PackageKey  # release it in the PackageCache when the rocker ends
    work_slot: int  # give it back to the WorkSlots when the rocker ends


async def build_rocker(req: RockerRequestModel, name: str, *, caller: Peer | None, packages: PackageCache,
                       slots: WorkSlots, guard_fd: int, first_entry_timeout: float = 10.0,
                       ready_timeout: float = 5.0, net: tuple[Network, Plan] | None = None,
                       cgroup_fds: list[int] | None = None, shares: DataShares | None = None,
                       spare: GuardStart | None = None) -> Built:
    """Build one rocker or undo everything and raise BuildError naming the failed step. `spare`: its
    guard, started ahead (spareguards.py); the build reaps it if it fails."""
    ctx = BuildContext(req, name, caller, packages, slots, shares=shares, guard_fd=guard_fd,
                       first_entry_timeout=first_entry_timeout, ready_timeout=ready_timeout, net=net,
                       cgroup_fds=cgroup_fds or [], spare=spare)
    await run_steps(STEPS, ctx, release=ctx.close_fds)  # on success SendMounts closed them
    assert ctx.spawned is not None and ctx.pkg_key is not None and ctx.work_slot is not None
    if shares is not None:
        shares.built(name, ctx.spawned.pid)
    return Built(ctx.spawned.pid, ctx.spawned.pidfd, ctx.ns_fds, ctx.pkg_key, ctx.work_slot)
