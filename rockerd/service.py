"""io.rocker.Rocker: Create, List, Kill, Kernel.

The request's path is straight: validate (pydantic) -> policy -> build ->
register -> reply with the namespace fds. Nothing here spawns a process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
import time
from dataclasses import dataclass, field

from rocker_sys import ns

from . import confine, entry, interface, journal, kernel, policy, rmdata
from .cgroups import CgroupError, CgroupManager, LimitPolicy, LimitRefused, Limits, RockerCgroup, detect
from .create import BuildError, DataShares, PackageCache, WorkSlots, build_rocker
from .create.spareguards import DEFAULT_SIZE as SPARES
from .create.spareguards import Spare, SpareGuards, reap_spare
from .create.warm import DEFAULT_BUDGET
from .network import NetConfig, Network
from .registry import Registry, Rocker
from .request import RequestInvalid, RockerRequestModel, parse_request
from .state import StateDir, matches, proc_starttime
from .varlink.server import Call, Interface, Reply, VarlinkError

ERR = interface.NAME + "."
log = logging.getLogger("rockerd")


@dataclass
class ServiceConfig:
    max_rockers: int = 4096
    max_rockers_per_uid: int = 1024
    first_entry_timeout: float = 10.0
    ready_timeout: float = 5.0
    state_dir: str = "/run/rocker/state"
    warm_budget: int = DEFAULT_BUDGET
    allow_nested_callers: bool = False
    network: NetConfig = field(default_factory=NetConfig)
    cgroups: str = "auto"  # "auto", "v2", "v1", "none" (cgroups/detect.py)
    cgroup_parent: str = ""  # v2: rockers under this delegated cgroup, not rockerd's own (--cgroup-parent)
    limit_policy: LimitPolicy | None = None
    spare_guards: int = SPARES  # guards started ahead for the next Create (create/spareguards.py); 0: none
    data_linger: float = 2.0  # seconds a data dir's overlays outlive its last rocker (--data-linger)


class RockerService:
    def __init__(self, guard_fd: int, config: ServiceConfig | None = None) -> None:
        self.guard_fd = guard_fd
        self.config = config or ServiceConfig()
        self.registry = Registry(self._ended)
        self.packages = PackageCache(self.config.warm_budget)
        self.slots = WorkSlots()
        self.shares = DataShares(self.slots, self.config.data_linger)  # rockers on one data dir share its overlays
        self.state = StateDir(self.config.state_dir)
        self.network = Network(self.config.network)
        self.cgroups = CgroupManager(detect(want=self.config.cgroups, parent=self.config.cgroup_parent),
                                     self.config.limit_policy)
        self.spares = SpareGuards(self.config.spare_guards, self.registry, self.cgroups, self.network)
        self.filters = confine.Filters.build()  # once: every Create sends the same programs
        self._adopt()

    def interface(self) -> Interface:
        return Interface(interface.NAME, interface.DESCRIPTION,
                         {"Create": self.create, "Join": self.join, "List": self.list, "Kill": self.kill,
                          "Kernel": self.kernel, "RemoveData": self.remove_data})

    async def create(self, call: Call) -> Reply:
        t0 = time.perf_counter()
        peer = call.peer
        self._check_caller_ns(call)
        try:
            req = parse_request(call.parameters)
        except RequestInvalid as e:
            self._refuse(peer.uid, f"invalid request: {e.field or 'request'}: {e.reason}")
            raise VarlinkError(ERR + "InvalidRequest", {"field": e.field, "reason": e.reason}) from None
        try:
            policy.check_ids(peer, req)
            confine.check(req.seccomp, peer.uid)
        except policy.Denied as e:
            self._refuse(peer.uid, str(e))
            raise VarlinkError(ERR + "PermissionDenied", {"reason": str(e)}) from None
        self._check_limits(peer.uid, req.uid)
        key = self.spares.key(req, peer.uid)
        spare = self.spares.take(key)  # a guard started for this key after an earlier Create (spareguards.py)
        name = spare.name if spare is not None else self.registry.reserve_name()
        cg, built, handed = spare.cgroup if spare is not None else None, None, False
        try:
            if spare is None:
                cg, limits = self._cgroup_for(name, req, peer.uid)
                plan = self.network.plan(name, req, peer.uid)
            else:
                limits, plan = self._cgroup_for(name, req, peer.uid, spare)[1], spare.plan
            req = req.model_copy(update={"network": plan.mode})  # List and the record show the mode it got
            handed = True
            built = await build_rocker(req, name, caller=peer, packages=self.packages, slots=self.slots,
                                       guard_fd=self.guard_fd,
                                       first_entry_timeout=self.config.first_entry_timeout,
                                       ready_timeout=self.config.ready_timeout, net=(self.network, plan),
                                       cgroup_fds=cg.guard_fds if cg else None, shares=self.shares,
                                       spare=spare.start if spare is not None else None)
        except policy.Denied as e:
            self.network.release(name)
            self._refuse(peer.uid, str(e))
            raise VarlinkError(ERR + "PermissionDenied", {"reason": str(e)}) from None
        except BuildError as e:
            self.network.release(name)
            journal.event(journal.FAILED, f"build of {name} for caller uid {peer.uid} failed at "
                          f"'{e.step}': {e.reason}", logging.WARNING, guard_name=name, app_id=req.app_id,
                          uid=req.uid, caller_uid=peer.uid, step=e.step, errno=e.errno)
            raise VarlinkError(ERR + "BuildFailed", {"step": e.step, "errno": e.errno, "reason": e.reason}) from None
        except BaseException:
            self.network.release(name)
            raise
        finally:
            self.registry.release_name(name)
            if built is None:
                self.cgroups.discard(cg)
                if spare is not None and not handed:  # its guard never reached the build, whose undo reaps
                    reap_spare(spare)
        rocker = Rocker(name=name, pid=built.pid, pidfd=built.pidfd, request=req, caller_uid=peer.uid,
                        pkg_key=built.pkg_key, work_slot=built.work_slot)
        self.registry.add(rocker)
        self.cgroups.started(cg, limits, built.pid, built.pidfd)
        try:
            self.state.save(rocker.record(proc_starttime(built.pid)))
        except OSError as e:  # the rocker works; only a restarted rockerd could not re-adopt it
            log.warning("could not record %s in %s: %s", name, self.state.path, e)
        ms = (time.perf_counter() - t0) * 1000
        self.spares.want(key, req, self.guard_fd, self.config.first_entry_timeout)  # after the reply
        asyncio.get_running_loop().call_soon(  # the line after the reply too (~75 us): before any later event
            lambda: journal.event(journal.CREATED, f"created {name} (guard pid {built.pid}) app_id={req.app_id} "
                                  f"uid={req.uid} gid={req.gid} for caller uid {peer.uid} in {ms:.1f} ms",
                                  guard_name=name, guard_pid=built.pid, app_id=req.app_id, uid=req.uid,
                                  gid=req.gid, caller_uid=peer.uid))
        return entry.entry_reply(rocker, built.ns_fds, self.cgroups.reply_fds(cg), self.filters)

    def _cgroup_for(self, name: str, req: RockerRequestModel, caller_uid: int,
                    spare: Spare | None = None) -> tuple[RockerCgroup | None, Limits]:
        try:
            if spare is not None:  # its cgroup exists, with the default limits: this request's go over them
                return spare.cgroup, self.cgroups.retarget(spare.cgroup, spare.limits, req, caller_uid)
            return self.cgroups.prepare(name, req, caller_uid)
        except LimitRefused as e:
            self._refuse(caller_uid, f"invalid request: {e}")
            raise VarlinkError(ERR + "InvalidRequest", {"field": e.field, "reason": e.reason}) from None
        except CgroupError as e:
            raise BuildError("create the rocker's cgroup", e.errno, str(e)) from None

    async def join(self, call: Call) -> Reply:
        """A live rocker's namespace fds, for a second process in it (rocker exec); root and its uid only."""
        name = call.parameters.get("guard_pname")
        if not isinstance(name, str):
            raise VarlinkError(ERR + "InvalidRequest", {"field": "guard_pname", "reason": "must be a string"})
        self._check_caller_ns(call)
        try:
            rocker = self.registry.get(name)
            if rocker is None:
                raise entry.Gone(name)
            entry.check_join(call.peer, rocker)
            ns_fds = entry.live_ns_fds(rocker)
            try:
                cgroup_fds = self.cgroups.join_fds(rocker.name, rocker.uid, call.peer.uid)
            except BaseException:
                for fd in ns_fds.values():
                    os.close(fd)
                raise
            return entry.entry_reply(rocker, ns_fds, cgroup_fds, self.filters)
        except entry.Gone:
            raise VarlinkError(ERR + "NoSuchRocker", {"guard_pname": name}) from None
        except policy.Denied as e:
            self._refuse(call.peer.uid, f"Join: {e}")
            raise VarlinkError(ERR + "PermissionDenied", {"reason": str(e)}) from None

    async def list(self, call: Call) -> Reply:
        self._check_caller_ns(call)
        rockers = [r.info() | self.cgroups.info(r.name) for r in self.registry
                   if call.peer.uid in (0, r.uid, r.caller_uid)]
        return Reply({"rockers": rockers})

    async def kernel(self, call: Call) -> Reply:
        k = kernel.current()
        return Reply({"release": k.release, "paths": [*k.paths(), self.cgroups.status()]})

    async def remove_data(self, call: Call) -> Reply:
        """rocker rm-data: rmdata.py does it, as the caller wherever it can."""
        self._check_caller_ns(call)
        try:
            done = await rmdata.remove_data_dir(call.parameters.get("data_dir"), call.peer, self.shares)
        except (rmdata.RemoveRefused, policy.Denied) as e:
            kind, reason = (e.kind, e.reason) if isinstance(e, rmdata.RemoveRefused) else ("PermissionDenied", str(e))
            self._refuse(call.peer.uid, f"RemoveData: {reason}")
            raise VarlinkError(ERR + kind, {"field": "data_dir", "reason": reason} if kind == "InvalidRequest"
                               else {"reason": reason}) from None
        return Reply({"removed": done.removed, "left": done.left})

    async def kill(self, call: Call) -> Reply:
        p = call.parameters
        name, sig = p.get("guard_pname"), p.get("signal")
        if sig is None:  # absent or null: varlink's two spellings of an omitted optional
            sig = int(signals.SIGKILL)
        if not isinstance(name, str):
            raise VarlinkError(ERR + "InvalidRequest", {"field": "guard_pname", "reason": "must be a string"})
        if type(sig) is not int or sig not in signals.valid_signals() or sig == 0:
            raise VarlinkError(ERR + "InvalidRequest", {"field": "signal", "reason": "must be a signal number"})
        self._check_caller_ns(call)
        rocker = self.registry.get(name)
        if rocker is None or call.peer.uid not in (0, rocker.uid, rocker.caller_uid):
            raise VarlinkError(ERR + "NoSuchRocker", {"guard_pname": name})
        ns.pidfd_send_signal(rocker.pidfd, sig)
        return Reply({})

    def _check_caller_ns(self, call: Call) -> None:
        """A call from inside a rocker (or any other container) is refused unless the operator allows it."""
        try:
            policy.check_caller_ns(call.peer, self.config.allow_nested_callers)
        except policy.Denied as e:
            self._refuse(call.peer.uid, f"{call.method.rpartition('.')[2]}: {e}")
            raise VarlinkError(ERR + "PermissionDenied", {"reason": str(e)}) from None

    def _check_limits(self, caller_uid: int, uid: int) -> None:
        c = self.config
        if len(self.registry) >= c.max_rockers:
            reason = f"{c.max_rockers} rockers are live, the most this daemon keeps"
        elif self.registry.count_for_uid(uid) >= c.max_rockers_per_uid:
            reason = f"uid {uid} has {c.max_rockers_per_uid} live rockers, the most per uid"
        else:
            return
        self._refuse(caller_uid, reason)
        raise VarlinkError(ERR + "LimitReached", {"limit": "rockers", "reason": reason})

    def _refuse(self, caller_uid: int, reason: str) -> None:
        journal.event(journal.REFUSED, f"refused request of caller uid {caller_uid}: {reason}", logging.WARNING,
                      caller_uid=caller_uid, reason=reason)

    def _ended(self, rocker: Rocker, status: int) -> None:
        lifetime = time.monotonic() - rocker.started
        journal.event(journal.ENDED, f"ended {rocker.name} (guard pid {rocker.pid}) after {lifetime:.2f} s",
                      guard_name=rocker.name, guard_pid=rocker.pid, app_id=rocker.request.app_id, uid=rocker.uid,
                      caller_uid=rocker.caller_uid, lifetime_sec=round(lifetime, 3), status=status)
        if rocker.pkg_key is not None:
            self.packages.release(rocker.pkg_key)
        self.network.release(rocker.name)
        self.shares.leave(rocker.name)  # the last one on its data dir gives back the work slot
        self.state.remove(rocker.name)
        self.cgroups.ended(rocker.name, rocker.pid)

    def _adopt(self) -> None:
        """Take back the rockers a previous rockerd left running; drop records of ones that are gone."""
        self._adopt_records()
        self.network.adopted(r.name for r in self.registry)
        self.cgroups.sweep({r.name for r in self.registry})

    def _adopt_records(self) -> None:
        for rec in self.state.load():
            try:
                pidfd = ns.pidfd_open(rec.pid)
            except OSError:
                pidfd = -1
            if pidfd < 0 or not matches(rec):  # checked after pidfd_open: the fd is the process that matched
                if pidfd >= 0:
                    os.close(pidfd)
                log.info("dropping the record of %s (guard pid %d): it is gone", rec.name, rec.pid)
                self.state.remove(rec.name)
                continue
            try:
                req = parse_request(rec.request)
            except RequestInvalid as e:  # written by us: only a damaged file or a rule made stricter
                os.close(pidfd)
                log.warning("not adopting %s (guard pid %d): its recorded request is refused now: %s; it runs "
                            "on until its apps end", rec.name, rec.pid, e)
                self.state.remove(rec.name)
                continue
            age = max(0.0, time.time() - rec.created)
            self.registry.add(Rocker(name=rec.name, pid=rec.pid, pidfd=pidfd, request=req, caller_uid=rec.caller_uid,
                                     created=rec.created, started=time.monotonic() - age, work_slot=rec.work_slot))
            self.shares.adopt(rec.name, rec.pid, req, rec.work_slot)
            self.network.adopt(rec.name, req.network or "none")
            self.cgroups.adopt(rec.name, rec.pid, pidfd)
            journal.event(journal.ADOPTED, f"adopted {rec.name} (guard pid {rec.pid}) left by an earlier rockerd",
                          guard_name=rec.name, guard_pid=rec.pid, app_id=req.app_id, uid=req.uid,
                          caller_uid=rec.caller_uid)
