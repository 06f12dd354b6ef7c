"""The daemon's side of cgroups: limits for a request, a cgroup per rocker, usage, OOM events, cleanup.

rockerd's service calls this at five points (prepare, started, ended, adopted, info), so the
create path stays readable and all cgroup knowledge is here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rocker_sys import ns

from .. import journal
from .detect import Hierarchy
from .limits import FIELDS, LimitPolicy, LimitRefused, Limits
from .mover import Mover, NsId, userns_of
from .oomwatch import OomWatch
from .spares import SparePool
from .tree import CgroupError, CgroupTree, RockerCgroup
from .usage import read_usage

log = logging.getLogger("rockerd.cgroups")
REMOVE_RETRIES = (0.01, 0.05, 0.2, 1.0, 3.0)  # seconds: processes of an ended rocker may take a moment to exit
OOM_RECHECKS = (0.05, 0.25, 1.0)  # seconds: v1 wakes us before the kill, the count rises after it
REFILL_DELAY = 0.02  # seconds after a Create's reply: its app's start (~2 ms) has the CPUs to itself


class CgroupManager:
    def __init__(self, hierarchy: Hierarchy, policy: LimitPolicy | None = None) -> None:
        self.tree = CgroupTree(hierarchy)
        self.policy = policy or LimitPolicy()
        self.live: dict[str, tuple[RockerCgroup, Limits]] = {}
        self.pending: set[str] = set()  # ended rockers whose cgroup is still busy (a retry is scheduled)
        if self.tree.enabled:
            try:
                self.tree.setup()
            except CgroupError as e:
                log.warning("cgroups: cannot set up rockerd's subtree (%s): limits are off", e)
                self.tree = CgroupTree(Hierarchy("none", reason=str(e)))
        log.info("cgroups: %s", self.tree.hier.describe() if self.tree.enabled else
                 f"limits are off ({self.tree.hier.reason})")
        self.oom = OomWatch(self.tree.hier.mode, self._oom_woken)
        self.mover = Mover()
        self.spares: SparePool | None = None  # v1 only: cgroup2 cannot rename (spares.py)
        self._refilling = False
        if self.tree.hier.mode == "v1":
            self.spares = SparePool(list(dict.fromkeys(self.tree.bases.values())), self.policy.defaults, self.tree.make)
            self.spares.sweep()
            while self.spares.refill():
                pass

    def status(self) -> dict[str, object]:
        """For the Kernel reply (`rocker status`): one more path rockerd takes on this host."""
        h = self.tree.hier
        return {"feature": "cgroups", "fast": h.mode == "v2", "forced": False,
                "path": h.describe() if h.mode != "none" else f"limits are off: {h.reason}",
                "fast_since": "4.5 with cgroup v2 mounted"}

    def prepare(self, name: str, req: Any, caller_uid: int) -> tuple[RockerCgroup | None, Limits]:
        """The rocker's cgroup with its limits applied; LimitRefused when the caller may not have
        them (above a ceiling, or limits asked for where there are none); CgroupError if the kernel
        says no."""
        asked = Limits(**{f: getattr(req, f) for f in FIELDS})
        if not self.tree.enabled:
            for f in FIELDS:
                if getattr(asked, f) is not None:
                    raise LimitRefused(f, f"limits are off on this host: {self.tree.hier.reason}")
            return None, Limits()
        limits = self.policy.resolve(asked, caller_uid)
        spare = self.spares.take(name) if self.spares else None
        return self.tree.create(name, limits, req.uid, caller_uid, spare), limits

    def retarget(self, cg: RockerCgroup | None, had: Limits, req: Any, caller_uid: int) -> Limits:
        """A spare guard's cgroup (made with the defaults, `had`) given this request's limits: only
        the ones that differ are written. LimitRefused and CgroupError as prepare()."""
        if cg is None:
            self.prepare("", req, caller_uid)  # limits off: refuses a request that asks for one
            return Limits()
        limits = self.policy.resolve(Limits(**{f: getattr(req, f) for f in FIELDS}), caller_uid)
        self.tree.apply(cg.name, limits, had)
        return limits

    def join_fds(self, name: str, uid: int, caller_uid: int) -> list[int]:
        """The fds a process joining the live rocker `name` (rocker exec) puts itself in its cgroup with."""
        if not self.tree.enabled or not self.tree.exists(name):
            return []
        fds = self.tree.join_fds(name, uid, caller_uid)
        entry = self.live.get(name)
        if entry is None:
            return fds
        if not fds and self.tree.hier.mode == "v2":
            fds = [self.mover.channel(name, self.tree.procs_path(name), entry[0].userns)]
        return fds + _cgroup_ns(entry[0].guard_pid)

    def reply_fds(self, cg: RockerCgroup | None) -> list[int]:
        """The fds the Create reply carries for the app to join the new rocker's cgroup (the reply's now)."""
        if cg is None:
            return []
        self._refill()
        fds, cg.procs_fds = cg.procs_fds, []
        if cg.moved_by_rockerd:
            fds = [self.mover.channel(cg.name, self.tree.procs_path(cg.name), cg.userns)]
        return fds + _cgroup_ns(cg.guard_pid)

    def discard(self, cg: RockerCgroup | None) -> None:
        """A build that failed: its cgroup goes at once (nothing ran in it but a reaped guard)."""
        if cg is not None:
            cg.close_fds()
            self._remove(cg.name, 0)
            self._refill()

    def _refill(self) -> None:
        """Make the spares a Create took, one per turn of the event loop, REFILL_DELAY after this
        Create's reply (off its critical path, and off the CPU while its app starts)."""
        if self.spares is None or self._refilling:
            return

        def one() -> None:
            if self.spares is not None and self.spares.refill():
                _soon(0, one)
            else:
                self._refilling = False

        self._refilling = _soon(REFILL_DELAY, one)

    def started(self, cg: RockerCgroup | None, limits: Limits, guard_pid: int = 0, pidfd: int = -1) -> None:
        if cg is not None:
            cg.close_guard_fds()
            cg.guard_pid = guard_pid
            cg.userns = self._userns(guard_pid, pidfd)
            self.live[cg.name] = (cg, limits)
            # after the reply is sent: nothing of the app runs before the launcher has it, and an OOM
            # kill the watch would miss still shows (check_oom at List, Inspect and the end)
            _soon(0, lambda: cg.name in self.live and self._watch_oom(cg.name))

    def adopt(self, name: str, guard_pid: int = 0, pidfd: int = -1) -> None:
        """A rocker an earlier rockerd left: its cgroup is where that one put it. `pidfd` is the
        registry's for the guard: an adopted guard is not our child, its PID alone proves nothing."""
        if self.tree.enabled and self.tree.exists(name):
            cg = RockerCgroup(name, self.tree.dirs_of(name), guard_pid=guard_pid,
                              userns=self._userns(guard_pid, pidfd))
            u = read_usage(self.tree, name)
            cg.oom_seen = u.oom_kills if u else 0
            self.live[name] = (cg, self.tree.limits_of(name))
            self._watch_oom(name)

    def _userns(self, guard_pid: int, pidfd: int) -> NsId | None:
        """v2: the guard's user namespace, whose processes the mover may move; looked up by PID, then
        checked through the guard's pidfd (alive: the PID was still its). None if it is gone."""
        if self.tree.hier.mode != "v2" or guard_pid <= 0:
            return None
        try:
            userns = userns_of(guard_pid)
            if pidfd >= 0:
                ns.pidfd_send_signal(pidfd, 0)
        except OSError:
            return None
        return userns

    def sweep(self, adopted: set[str]) -> None:
        """Cgroups of rockers that ended while no rockerd ran: remove them."""
        if self.tree.enabled:
            for name in self.tree.leftovers() - adopted:
                log.info("cgroups: removing %s's cgroup: the rocker ended while rockerd was away", name)
                self._remove(name, 0)

    def ended(self, name: str, guard_pid: int = 0) -> None:
        """The rocker's last OOM count and its cgroup's removal on a thread: four rmdirs on v1 took
        ~0.4 ms of the loop at each end, while a launcher restarting its app sends the next Create."""
        entry = self.live.pop(name, None)
        self.mover.drop(name)
        if entry is not None:
            self.oom.unwatch(name)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a caller outside rockerd): at once, as before
                self.check_oom(entry[0], guard_pid)
                self._remove(name, 0)
                return
            self.pending.add(name)  # until removed: flush() at rockerd's exit sees it
            _ends().submit(self._end_off_loop, entry[0], guard_pid, loop)

    def _end_off_loop(self, cg: RockerCgroup, guard_pid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.check_oom(cg, guard_pid)
        removed = self.tree.remove(cg.name)
        try:  # the retries (a process on its way out) and the bookkeeping stay the loop's
            loop.call_soon_threadsafe(self.pending.discard if removed else lambda n: self._remove(n, 1), cg.name)
        except RuntimeError:  # the loop is closed: flush() has had its turn
            pass

    def check_oom(self, cg: RockerCgroup, guard_pid: int = 0) -> None:
        """A journal event for each rise of the rocker's OOM-kill count since we last looked."""
        u = read_usage(self.tree, cg.name)
        if u is not None and u.oom_kills > cg.oom_seen:
            n = u.oom_kills - cg.oom_seen
            cg.oom_seen = u.oom_kills
            journal.event(journal.OOM, f"out of memory in {cg.name}: the kernel killed {n} of its processes "
                          f"({u.oom_kills} in all)", logging.WARNING, guard_name=cg.name,
                          guard_pid=guard_pid or cg.guard_pid or None, oom_kills=u.oom_kills)

    def _watch_oom(self, name: str) -> None:
        try:
            self.oom.watch(name, self.tree.memory_dir(name))
        except OSError as e:  # the limits hold all the same; the event then comes when it ends or is listed
            log.warning("cgroups: cannot watch %s for OOM kills: %s", name, e)

    def _oom_woken(self, name: str, recheck: int = 0) -> None:
        entry = self.live.get(name)
        if entry is None:
            return
        seen = entry[0].oom_seen
        self.check_oom(entry[0])
        if entry[0].oom_seen == seen and recheck < len(OOM_RECHECKS):
            asyncio.get_running_loop().call_later(OOM_RECHECKS[recheck], self._oom_woken, name, recheck + 1)

    def info(self, name: str) -> dict[str, Any]:
        """`limits` and `usage` (None: no cgroup) for List / `rocker ps` / `rocker inspect`."""
        entry = self.live.get(name)
        if entry is None:
            return {"limits": Limits().as_info(), "usage": None}
        cg, limits = entry
        u = read_usage(self.tree, name)
        if u is not None and u.oom_kills > cg.oom_seen:
            self.check_oom(cg)
        return {"limits": limits.as_info(), "usage": u.as_info() if u else None}

    def flush(self, timeout: float = 1.0) -> None:
        """At rockerd's exit: remove the cgroups of rockers that have ended (no process left), waiting
        up to `timeout` for those on their way out; live rockers keep theirs (a later rockerd adopts them)."""
        if self.spares is not None:
            self.spares.clear()
        deadline = time.monotonic() + timeout
        while True:
            for name in [*self.live, *self.pending]:
                if self.tree.empty(name) and self.tree.remove(name):
                    self.live.pop(name, None)
                    self.pending.discard(name)
            if not self.pending or time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _remove(self, name: str, attempt: int) -> None:
        if self.tree.remove(name) or not self.tree.enabled:
            self.pending.discard(name)
            return
        self.pending.add(name)
        if attempt >= len(REMOVE_RETRIES):
            log.warning("cgroups: %s's cgroup is still busy; left in place (rockerd's next start removes it)",
                        name)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(REMOVE_RETRIES[attempt], self._remove, name, attempt + 1)


_pool: ThreadPoolExecutor | None = None


def _ends() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rockerd-cgroup-ends")
    return _pool


def _soon(delay: float, fn: Callable[[], object]) -> bool:
    """Run `fn` on the event loop after `delay` s (0: at its next turn, which comes after the reply
    this call is part of has been sent); False if no loop runs (a caller outside rockerd's loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    loop.call_later(delay, fn)
    return True


def _cgroup_ns(guard_pid: int) -> list[int]:
    """The guard's cgroup namespace (rooted at the rocker's cgroup: rocker-spawn.c), last of the
    reply's `cgroups`: the app joins it (rocker-join.h). None if the guard is already gone."""
    try:
        return [os.open(f"/proc/{guard_pid}/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)] if guard_pid > 0 else []
    except (FileNotFoundError, ProcessLookupError):
        return []
