"""Spare guards: the next Create's guard, started before that Create comes.

Most of what a Create waits for that is not the request's own mounts is the guard's start: the
clone into six namespaces, the uid and gid maps, lo, the exec, then (rocker-guard.c's setup) /
rprivate, /proc and its hardening; on a cgroup v1 host also the guard's cgroup. None of it depends
on the request beyond the app's uid and gid, the network mode and who asks (the cgroup's join fds
are opened for the caller's kind). So after a Create, rockerd starts one guard for the same key,
after the reply; the next Create with that key takes it, with the name, cgroup and network plan
it was started with, and only sends it its mounts. A guard waits for its mounts as long as it
takes (its first-entry clock starts after them) and exits when rockerd goes (EOF on its status
socket), so a spare never outlives rockerd.

A spare is not a rocker: no record, no journal line, not in List. It costs what an idle guard
costs (docs/benchmarks.md). At most `size` are kept, one per key, the least recently wanted
dropped first; one unused for IDLE seconds is reaped. A Create that publishes ports, or whose
key has no spare, starts its guard itself, as before.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..request import RockerRequestModel
from .handoff import GuardStart, _reap_late, _settled, start_guard_soon

if TYPE_CHECKING:
    from ..cgroups import CgroupManager, Limits, RockerCgroup
    from ..network import Network, Plan
    from ..registry import Registry

log = logging.getLogger("rockerd.spares")

IDLE = 60.0  # seconds a spare waits for its Create before it is reaped
DEFAULT_SIZE = 4  # spares kept at once (one per key)


@dataclass(frozen=True)
class SpareKey:
    """What a guard's start depends on: the app's ids, the network mode, and who asks (the cgroup's
    join fds and the limits' ceilings are the caller's)."""

    uid: int
    gid: int
    network: str
    caller_uid: int


@dataclass
class Spare:
    key: SpareKey
    name: str
    start: GuardStart
    cgroup: RockerCgroup | None
    limits: Limits  # what its cgroup holds now (the defaults)
    plan: Plan
    timer: asyncio.TimerHandle | None = None
    watched: int = -1  # its guard's pidfd, watched on the loop while it waits

    def unwatch(self) -> None:
        if self.watched >= 0:
            asyncio.get_running_loop().remove_reader(self.watched)
            self.watched = -1


class SpareGuards:
    def __init__(self, size: int, registry: Registry, cgroups: CgroupManager, network: Network) -> None:
        self.size = size
        self.registry = registry
        self.cgroups = cgroups
        self.network = network
        self._spares: OrderedDict[SpareKey, Spare] = OrderedDict()

    def key(self, req: RockerRequestModel, caller_uid: int) -> SpareKey | None:
        """The request's key, or None if no spare can serve it (published ports are its own)."""
        if self.size <= 0 or req.publish:
            return None
        return SpareKey(req.uid, req.gid, req.network or self.network.config.default_mode, caller_uid)

    def take(self, key: SpareKey | None) -> Spare | None:
        """The spare for `key`, now the caller's (its name is still reserved); None if there is none
        or it died (someone killed it): that one is reaped and the Create starts its own guard."""
        spare = self._spares.pop(key, None) if key is not None else None
        if spare is None:
            return None
        if spare.timer is not None:
            spare.timer.cancel()
        spare.unwatch()
        if spare.start.done() and not _alive(spare.start):
            log.info("spare guard %s for %s died or was stopped before use: reaped", spare.name, key)
            self._discard(spare)
            return None
        return spare

    def want(self, key: SpareKey | None, req: RockerRequestModel, guard_fd: int, first_entry_timeout: float) -> None:
        """Have a spare for `key` from the loop's next turn (after this Create's reply has gone)."""
        if key is None or key in self._spares:
            if key is not None:
                self._spares.move_to_end(key)
            return
        template = req.model_copy(update={"memory_max": None, "pids_max": None, "cpu_max": None, "publish": []})
        asyncio.get_running_loop().call_soon(self._make, key, template, guard_fd, first_entry_timeout)

    def _make(self, key: SpareKey, req: RockerRequestModel, guard_fd: int, first_entry_timeout: float) -> None:
        if key in self._spares or self.size <= 0:  # 0 once close() has begun: none may outlive it
            return
        while len(self._spares) >= self.size:
            self._discard(self._spares.popitem(last=False)[1])
        name = self.registry.reserve_name()
        cg, plan = None, None
        try:
            cg, limits = self.cgroups.prepare(name, req, key.caller_uid)
            plan = self.network.plan(name, req, key.caller_uid)
            net = (self.network, plan)
            start = start_guard_soon(name, req.uid, req.gid, guard_fd, first_entry_timeout, net,
                                     cg.guard_fds if cg else [])
        except Exception as e:  # the next Create starts its own guard, as without spares
            log.info("no spare guard for %s: %s", key, e)
            if plan is not None:
                self.network.release(name)
            self.cgroups.discard(cg)
            self.registry.release_name(name)
            return
        spare = Spare(key, name, start, cg, limits, plan)
        loop = asyncio.get_running_loop()
        spare.timer = loop.call_later(IDLE, self._expire, key, spare)
        self._spares[key] = spare
        start.add_done_callback(lambda _: self._watch(key, spare))

    def _watch(self, key: SpareKey, spare: Spare) -> None:
        """A spare that dies while it waits (its uid may kill it) is reaped at once: no zombie, and its
        cgroup, network and name go back."""
        if self._spares.get(key) is not spare:
            return
        if not _alive(spare.start):
            self._expire(key, spare)
            return
        pidfd = spare.start.result()[0].pidfd
        spare.watched = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._expire, key, spare)

    def _expire(self, key: SpareKey, spare: Spare) -> None:
        if self._spares.get(key) is spare:
            del self._spares[key]
            self._discard(spare)

    def _discard(self, spare: Spare) -> None:
        """Reap its guard, then give back its name, network and cgroup (after a network job in flight)."""
        if spare.timer is not None:
            spare.timer.cancel()
        spare.unwatch()

        def release() -> None:
            self.network.release(spare.name)
            self.cgroups.discard(spare.cgroup)
            self.registry.release_name(spare.name)

        _once_started(spare.start, lambda f: (_reap_late(f), _after_net(f, release)))

    async def close(self) -> None:
        """rockerd stops: every spare reaped, its cgroup and network given back."""
        self.size = 0
        starts = [s.start for s in self._spares.values()]
        while self._spares:
            self._discard(self._spares.popitem()[1])
        if starts:
            await asyncio.wait(starts, timeout=5)
            for f in starts:
                if f.done() and not f.cancelled() and f.exception() is None:
                    await _settled(f.result()[2])


def reap_spare(spare: Spare) -> None:
    """Only its guard (a failed Create gives back its name, network and cgroup itself)."""
    _once_started(spare.start, _reap_late)


def _once_started(start: GuardStart, then: Callable[[GuardStart], object]) -> None:
    """`then(start)` now if the guard's start is over, else when it is (its C thread may still run)."""
    if start.done():
        then(start)
    else:
        start.add_done_callback(then)


def _after_net(start: GuardStart, then: Callable[[], None]) -> None:
    """`then` once a bridged spare's network job is over (its address and veth must not be given
    back under it)."""
    job = start.result()[2] if not start.cancelled() and start.exception() is None else None
    if job is None or job.done():
        then()
    else:
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(then))


def _alive(start: GuardStart) -> bool:
    """Alive and not stopped: its uid may SIGSTOP it, and the Create would wait for its ready byte
    until --ready-timeout. (It may still be stopped right after this look: then that Create fails
    after the timeout, one of its uid's own, as when it stops a guard that is being built.)"""
    if start.cancelled() or start.exception() is not None:
        return False
    spawned = start.result()[0]
    if spawned.pidfd < 0:
        return False
    p = select.poll()
    p.register(spawned.pidfd, select.POLLIN)
    if p.poll(0):  # a pidfd turns readable when its process exits
        return False
    try:  # our unreaped child: the PID is its own
        with open(f"/proc/{spawned.pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"T", b"t", b"Z", b"X")
