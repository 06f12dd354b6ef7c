"""The build's steps that run beside the event loop, and the hand-off to the guard.

StartGuard and OpenPackage only start work (the guard's clone on a thread of
the C library's, which brings lo up too; the package's open as the caller on
a worker thread): the host steps run meanwhile, and GuardStarted and
PackageOpened later wait for what they give. Then the mounts travel to the
guard over its status socket (it attaches them) while we open its namespace
fds, and we wait (asynchronously) for its ready byte. Each step's undo copes with a half-done
execute; the guard is reaped before the host steps are undone.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rocker_sys import ns
from rocker_sys.libc import SyscallError

from . import pkgopen
from .host import HostContext
from .spawn import SEND_STEP, Spawned, Starting, parse_report, reap, send_mounts, wait_ready
from .steps import BuildError, Step, as_build_error

if TYPE_CHECKING:
    from ..network import Network, Plan

# setns order for entering: user first, so the caller holds the rocker's
# capabilities when it joins the namespaces that user namespace owns
NS_NAMES = ("user", "mnt", "pid", "net", "uts", "ipc")

SPAWN_THREADS = 2  # bridged rockers' network jobs
_spawner: ThreadPoolExecutor | None = None

NetJob = Future[None]  # a bridged rocker's veth, address and route, on a spawn thread (Network.setup)
Started = tuple[Spawned, socket.socket, NetJob | None]
GuardStart = asyncio.Future[Started]


@dataclass
class BuildContext(HostContext):
    """What the host steps share (HostContext), plus the guard and how long to wait for it."""

    guard_fd: int = -1  # the guard binary, opened at daemon start
    first_entry_timeout: float = 10.0
    ready_timeout: float = 5.0
    starting: GuardStart | None = None  # the clone on its C thread
    opening: Future[int] | None = None  # the package's open, until PackageOpened takes it
    spawned: Spawned | None = None
    status: socket.socket | None = None  # our end of the guard's status socket
    ns_fds: dict[str, int] = field(default_factory=dict)
    net: tuple[Network, Plan] | None = None  # None: a netns with lo only (rockerd/network/)
    net_job: NetJob | None = None  # from GuardStarted until NetworkReady
    cgroup_fds: list[int] = field(default_factory=list)  # cgroup.procs the guard joins before it runs
    spare: GuardStart | None = None  # a guard started before this Create (spareguards.py): StartGuard takes it


def _spawn_pool() -> ThreadPoolExecutor:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="rockerd-spawn")
    return _spawner


class StartGuard(Step[BuildContext]):
    """The clone into six new namespaces is kernel work: it runs on a thread of the C library's own
    (spawn.Starting), which needs no Python lock, while the mounts are built; the loop hears of
    its end from an eventfd. (A Python worker thread lost ~0.5 ms per build taking that lock
    from the threads that build the mounts. Whole builds on worker threads were measured to lose
    at concurrency 2: the GIL handoffs between their many syscalls cost more than the overlap.)"""

    def describe(self) -> str:
        return "start guard"

    def execute(self, ctx: BuildContext) -> None:
        if ctx.spare is not None:  # started before the Create, for its uid, gid, network and cgroup
            ctx.starting, ctx.spare = ctx.spare, None
            return
        ctx.starting = start_guard_soon(ctx.name, ctx.req.uid, ctx.req.gid, ctx.guard_fd, ctx.first_entry_timeout,
                                        ctx.net, ctx.cgroup_fds)

    async def undo(self, ctx: BuildContext) -> None:
        """Reap a guard that will not be used before the caller hears of the failure: until it is
        gone, its mount namespace holds a copy of every host mount (an umount of one would say EBUSY)."""
        starting, ctx.starting = ctx.starting, None
        if starting is None:
            return
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_reap_late)
            raise
        except Exception:
            return  # no guard was started
        await _settled(starting.result()[2])
        _reap_late(starting)


_in_flight: set[Starting] = set()  # starts whose C thread may still read what they hold


def start_guard_soon(name: str, uid: int, gid: int, guard_fd: int, first_entry_timeout: float,
                     net: tuple[Network, Plan] | None, cgroup_fds: list[int]) -> GuardStart:
    """The guard's start from now, on its C thread; the future gives it once the loop hears it is done.
    The guard then does its mount-free setup and waits for the mounts (SendMounts), however long."""
    starting = Starting(name, uid, gid, guard_fd, first_entry_timeout, net[1].ns_flags if net else ns.ROCKER_NS,
                        cgroup_fds)
    loop = asyncio.get_running_loop()
    fut: GuardStart = loop.create_future()
    _in_flight.add(starting)  # until its thread is done, whatever becomes of the build
    loop.add_reader(starting.done_fd, _guard_started, loop, starting, fut, net, uid)
    return fut


def _guard_started(loop: asyncio.AbstractEventLoop, starting: Starting, fut: GuardStart,
                   net: tuple[Network, Plan] | None, uid: int) -> None:
    """The C thread is done (its eventfd is readable): the guard, and a bridged rocker's network job."""
    loop.remove_reader(starting.done_fd)
    _in_flight.discard(starting)
    try:
        started = _with_network(*starting.result(), net, uid)
    except BaseException as e:
        if not fut.done():
            fut.set_exception(e)
        return
    if fut.done():  # nobody waits any more (cannot happen: the build awaits it shielded)
        reap(started[0])
        started[1].close()
        return
    fut.set_result(started)


def _with_network(spawned: Spawned, status: socket.socket, net: tuple[Network, Plan] | None, uid: int) -> Started:
    """lo is up already (the guard's child brought it up from inside); a bridged rocker's veth,
    address and route are a job of their own on a spawn thread (NetworkReady waits for it), so the
    mounts go to the guard meanwhile. Reaps the guard if it fails."""
    if net is None or net[1].mode != "bridge":
        return spawned, status, None
    try:
        fd = os.open(f"/proc/{spawned.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # our unreaped child
        return spawned, status, _spawn_pool().submit(_setup_net, net, fd, uid)
    except BaseException as e:
        report = _early_report(status)  # a child that failed (say, at its exec) has said why: that first
        reap(spawned)
        status.close()
        if report is not None:
            raise report from e
        if isinstance(e, Exception):
            raise as_build_error("set up the network", e) from e
        raise


def _setup_net(net: tuple[Network, Plan], netns_fd: int, uid: int) -> None:
    try:
        net[0].setup(net[1], netns_fd, uid)
    finally:
        os.close(netns_fd)


async def _settled(job: NetJob | None) -> None:
    """Wait out a network job before its rocker is undone (its record and rules must not come after)."""
    if job is not None:
        try:
            await asyncio.shield(asyncio.wrap_future(job))
        except Exception:  # NetworkReady reports it; here only its end matters
            pass


def _early_report(status: socket.socket, wait_ms: int = 0) -> BuildError | None:
    """A report the guard's child left on the status socket; `wait_ms` bounds a wait for one that is
    on its way (the peer's end closing ends the wait at once)."""
    if wait_ms:
        poller = select.poll()
        poller.register(status.fileno(), select.POLLIN)
        poller.poll(wait_ms)
    try:
        data = status.recv(4096, socket.MSG_DONTWAIT)
    except OSError:
        return None
    return parse_report(data) if data[:1] == b"E" else None


def _reap_late(f: GuardStart) -> None:
    """Reap the guard a finished start gave, if it gave one (idempotent: GuardStarted may have)."""
    if not f.cancelled() and f.exception() is None:
        spawned, status, _ = f.result()
        reap(spawned)
        status.close()


class OpenPackage(Step[BuildContext]):
    """A lookup of the caller's path may hang: it runs off the loop from now (pkgopen.py)."""

    def describe(self) -> str:
        return pkgopen.STEP

    def execute(self, ctx: BuildContext) -> None:
        if ctx.req.app_pkg_sha256 is None:  # first on the dir steps' thread (HostDirs)
            ctx.opening = pkgopen.Deferred(ctx.req.app_pkg_path, ctx.caller)
        else:  # a digest reads the whole file: a thread of its own, beside the dir steps
            ctx.opening = pkgopen.start_open(ctx.req.app_pkg_path, ctx.caller, ctx.req.app_pkg_sha256)

    def undo(self, ctx: BuildContext) -> None:
        if ctx.opening is not None:  # nobody took it: close the fd when it comes
            pkgopen.abandon(ctx.opening)
            ctx.opening = None


class PackageOpened(Step[BuildContext]):
    """Wait (within pkgopen's deadline) for the fd MountPackage mounts; usually it is there already."""

    def describe(self) -> str:
        return pkgopen.STEP

    async def execute(self, ctx: BuildContext) -> None:
        opening, ctx.opening = ctx.opening, None  # opened() abandons it itself when it gives up
        assert opening is not None
        ctx.pkg_fd = await pkgopen.opened(opening, ctx.req.app_pkg_path, pkgopen.deadline(ctx.req.app_pkg_sha256))


class GuardStarted(Step[BuildContext]):
    def describe(self) -> str:
        return "start guard"

    async def execute(self, ctx: BuildContext) -> None:
        assert ctx.starting is not None
        ctx.spawned, ctx.status, ctx.net_job = await asyncio.shield(ctx.starting)

    async def undo(self, ctx: BuildContext) -> None:
        job, ctx.net_job = ctx.net_job, None
        await _settled(job)
        if ctx.spawned is not None:
            reap(ctx.spawned)
        if ctx.status is not None:
            ctx.status.close()  # a no-op once detached


class NetworkMounts(Step[BuildContext]):
    """A bridged rocker's resolv.conf, among the mounts the guard attaches."""

    def describe(self) -> str:
        return "mount resolv.conf"

    def execute(self, ctx: BuildContext) -> None:
        if ctx.net is not None:
            ctx.mounts += ctx.net[0].mounts(ctx.net[1])


class SendMounts(Step[BuildContext]):
    """The detached mounts to the guard, which attaches them; then ours go (they would keep the
    mounts alive after the rocker ends)."""

    def describe(self) -> str:
        return SEND_STEP

    def execute(self, ctx: BuildContext) -> None:
        assert ctx.status is not None
        send_mounts(ctx.status, ctx.mounts)
        ctx.close_fds()  # the guard has its own now; ours would keep the mounts alive


class OpenNamespaces(Step[BuildContext]):
    """While the guard attaches the mounts. The guard is our unreaped child: its PID is its own."""

    def describe(self) -> str:
        return "start guard"

    def execute(self, ctx: BuildContext) -> None:
        assert ctx.spawned is not None
        try:
            ctx.ns_fds = open_ns_fds(ctx.spawned.pid)
        except OSError as e:  # gone already: a child that failed (at its exec, say) has said why: that first
            report = _early_report(ctx.status, wait_ms=1000) if ctx.status is not None else None
            if report is not None:
                raise report from e
            raise

    def undo(self, ctx: BuildContext) -> None:
        for fd in ctx.ns_fds.values():
            os.close(fd)
        ctx.ns_fds = {}


class DropHostNet(Step[BuildContext]):
    """Host mode: the rocker is in the host's netns, whose fd the client has of its own (lo is the
    host's, or was brought up by the guard's child, rocker-spawn.c)."""

    def describe(self) -> str:
        return "drop the host's net fd"

    def execute(self, ctx: BuildContext) -> None:
        if ctx.net is not None and ctx.net[1].mode == "host":
            os.close(ctx.ns_fds.pop("net"))


class GuardReady(Step[BuildContext]):
    """The guard's ready byte, a setup error report, or its death (spawn.wait_ready reaps it then)."""

    def describe(self) -> str:
        return "wait for guard"

    async def execute(self, ctx: BuildContext) -> None:
        assert ctx.spawned is not None and ctx.status is not None
        await wait_ready(ctx.spawned, ctx.status.detach(), ctx.ready_timeout)  # it closes the fd


class NetworkReady(Step[BuildContext]):
    """A bridged rocker's network, set up on a spawn thread while the guard attached its mounts."""

    def describe(self) -> str:
        return "set up the network"

    async def execute(self, ctx: BuildContext) -> None:
        if ctx.net_job is None:
            return
        try:  # shielded: a cancelled build still lets the job finish (GuardStarted's undo waits for it)
            await asyncio.shield(asyncio.wrap_future(ctx.net_job))
        except Exception as e:
            raise as_build_error("set up the network", e) from e


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
