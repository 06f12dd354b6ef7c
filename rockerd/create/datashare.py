"""Rockers on one data dir share its overlays: one overlayfs per overlay group, cloned into each.

Two overlayfs mounts over one upper dir are undefined behaviour (the kernel
says "upperdir is in-use": writes of one are lost to the other, sqlite sees
I/O errors). So the data dir, known by its inode, has at most one set of
overlays at a time: the first rocker on it builds them (host.py's steps) and
every later one with the same overlay dirs and uid:gid gets clones of the
same mounts, so its writes and the others' land on one filesystem. A request
for a data dir in use with other overlay dirs or ids is refused, naming a
rocker that holds it. The last rocker's end takes the overlays and the work
slot with it, on a thread of its own (ENDS), never the loop: the work slot is
a tree the caller can fill, and an overlayfs's unmount syncs its upper fs.
Until those overlays are gone a new rocker on the data dir waits (as for a
share being built), so one upper dir never has two overlayfs.

The share keeps the first rocker's overlay mounts (stage.py's `Kept`) and
gives each rocker open_tree(OPEN_TREE_CLONE) clones of them, the first one
included, so an overlay lives exactly as long as the share, whichever rocker
ends first. On Linux 6.15 the kept mounts are detached ones, rockerd's fds:
a clone is one syscall on the build's own thread. Before it they stay
attached in the stager's private mount namespace and are cloned there.
Guards never see either (they copy the daemon's own namespace). A rockerd
restarted with rockers live takes each adopted rocker's overlays from its
guard's mount namespace (stage.take), after checking they are overlays, and
keeps them staged (on any kernel: 6.15 clones a detached mount only in the
namespace it came from), so later rockers on that data dir join them.

A share whose last rocker ends lingers (`rockerd --data-linger SEC`, default
2 s; 0: it ends at once): a launcher restarting its app, or a benchmark, starts
the next rocker on the same data dir within milliseconds, and rebuilding the
overlays (and first waiting for the old ones to be dropped) is most of a
create's dir steps. A claim within the linger with the same layers revives
it, once the data dir still holds what the kept overlays write to: each
upper dir and work dir recorded at the build (`Mark`) must be the same inode,
owner and mode at its path, reached beneath the data dir with no symlink or
mount on the way; otherwise, or with other layers, the share ends now and the
claim waits for its end (SharePending: drop and work slot, so it takes the
same slot) and builds afresh. Only a share whose last rocker was built
lingers (a failed build's undo takes its dirs away). One thread (`_expire`) ends
the shares whose linger has passed; rm-data and rockerd's stop end them at
once. Shares adopted after a restart end as before (nothing was recorded at
their build to check them against).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from rocker_sys import fs

from .. import kernel, policy
from ..request import RockerRequestModel
from . import layout, stage
from .overlay_plan import OverlayGroup
from .steps import BuildError
from .workslots import WorkSlots

log = logging.getLogger("rockerd.datashare")

T = TypeVar("T")
DataKey = tuple[int, int]  # (st_dev, st_ino) of the data dir
Layers = tuple[tuple[str, ...], int, int]  # overlay dirs, uid, gid: what must match to share
Mark = tuple[str, tuple[int, ...]]  # a dir the kept overlays write to: path relative to the data dir, _identity()


def layers_of(req: RockerRequestModel) -> Layers:
    return tuple(req.app_overlay_dirs), req.uid, req.gid


@dataclass
class Share:
    key: DataKey
    data_dir: str
    layers: Layers
    data_fd: int  # O_PATH, for removing the work slot at the end
    id: int = 0  # names its stage dirs (before 6.15)
    members: set[str] = field(default_factory=set)  # rockers on it, builds in progress included
    holders: dict[str, int] = field(default_factory=dict)  # built rockers: name -> guard pid
    kept: stage.Kept | None = None  # its overlays, which each rocker on it gets clones of
    slot: int | None = None
    first: cf.Future[bool] | None = None  # while the first rocker builds the overlays
    ended: cf.Future[None] = field(default_factory=cf.Future)  # done once its last rocker has left
    removing: bool = False  # rm-data is removing the dir
    marks: list[Mark] | None = None  # its overlays' upper and work dirs at the build (None: it may not linger)

    def holder_name(self) -> str:
        return next(iter(self.holders), None) or next(iter(self.members), "?")


# How long a build whose overlays differ from the data dir's holder waits for that holder to end before
# it is refused: `rocker run A; rocker run B` on one data dir must not meet A's rocker still ending (its
# app has exited, its guard and rockerd's handling of its end follow within milliseconds).
ENDING_GRACE = 0.5


class DataDirInUse(policy.Denied):
    """The data dir is in use with other overlays or ids, or is being removed."""


class HolderDiffers(Exception):
    """The data dir is held with other overlays or ids: the build waits (off its thread) up to
    ENDING_GRACE for the holder to end, then is refused with `refusal`."""

    passthrough = True

    def __init__(self, ended: cf.Future[None], refusal: DataDirInUse) -> None:
        super().__init__(str(refusal))
        self.ended = ended
        self.refusal = refusal


class SharePending(Exception):
    """Another build is making the overlays this one would share: wait for it, then try again."""

    passthrough = True

    def __init__(self, first: cf.Future[bool] | cf.Future[None]) -> None:
        super().__init__("the data dir's overlays are being built")
        self.first = first


def _describe(layers: Layers) -> str:
    dirs, uid, gid = layers
    return f"overlays [{', '.join(dirs) or 'none'}] as {uid}:{gid}"


def _locked(fn: Callable[..., T]) -> Callable[..., T]:
    def run(self: DataShares, *args: object) -> T:
        with self.lock:
            return fn(self, *args)
    run.__doc__ = fn.__doc__
    return run


@dataclass
class Ending:
    """A share whose last rocker has left, while its thread takes its overlays and work slot away."""

    dropped: cf.Future[bool] = field(default_factory=cf.Future)  # its overlays are gone: the dir may be claimed
    finished: cf.Future[None] = field(default_factory=cf.Future)  # its work slot too: rm-data may start


# Two pools, so that a work slot its owner filled (minutes of rm -r) never holds up another data dir's
# overlay drop, which that dir's next rocker waits for: drops are short, slots may be long.
_ends: dict[str, ThreadPoolExecutor] = {}


def _off_loop(kind: str, fn: Callable[..., None], *args: object) -> None:
    pool = _ends.get(kind)
    if pool is None:
        pool = _ends[kind] = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"rockerd-ends-{kind}")
    pool.submit(fn, *args)


class DataShares:
    """Every data dir in use: who uses it, with which overlays, and where they are kept."""

    def __init__(self, slots: WorkSlots, linger: float = 0.0) -> None:
        self.slots = slots
        self.linger = linger  # seconds a share outlives its last rocker (rockerd --data-linger)
        self._by_key: dict[DataKey, Share] = {}
        self._ending: dict[DataKey, Ending] = {}
        self._lingering: dict[DataKey, float] = {}  # shares with no rocker: when each ends (monotonic)
        self._expiry: threading.Thread | None = None
        self._by_name: dict[str, Share] = {}
        self._ids = itertools.count()
        if not kernel.current().tree_clone:
            stage.stager().up()  # its thread and namespace now, not on a create's path (and its fd with the daemon's)
        self.lock = threading.RLock()  # builds run their dir steps on threads (dirsteps.py)
        self._due = threading.Condition(self.lock)  # wakes _expire: a new linger, or the stop
        self._stopped = False

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: DataKey) -> Share | None:
        return self._by_key.get(key)

    def claim(self, name: str, req: RockerRequestModel, data_fd: int) -> tuple[Share, bool]:
        """Join the data dir's share (True) or start it (False); refuse a different one. A lingering
        share is revived only once its dirs are checked (off the lock: they are the caller's)."""
        with self.lock:
            share, joined, reviving = self._claim(name, req, data_fd)
        return share, (self._revive(name, share) if reviving else joined)

    def _claim(self, name: str, req: RockerRequestModel, data_fd: int) -> tuple[Share, bool, bool]:
        st = os.fstat(data_fd)
        key = (st.st_dev, st.st_ino)
        share = self._by_key.get(key)
        layers = layers_of(req)
        if share is not None and self._lingering.pop(key, None) is not None:
            if share.layers != layers:  # nobody holds it: it ends now; this build follows, in the same slot
                raise SharePending(self._end(share).finished)
            share.first = cf.Future()  # reviving: a claim meanwhile waits for the check
            share.ended = cf.Future()
            share.members.add(name)
            self._by_name[name] = share
            return share, True, True
        ending = self._ending.get(key)
        if ending is not None and ending.dropped.done():
            ending = None  # only its work slot is left to clear: a new share takes another slot
        if share is None and ending is not None:
            raise SharePending(ending.dropped)  # the last rocker's overlays are still going
        if share is not None:
            if share.removing:
                raise DataDirInUse(f"data dir {req.app_data_dir} is being removed (rocker rm-data)")
            if share.layers != layers:
                raise HolderDiffers(share.ended, DataDirInUse(
                    f"data dir {req.app_data_dir} is in use by rocker {share.holder_name()} with "
                    f"{_describe(share.layers)}; this request has {_describe(layers)}: rockers share a data dir "
                    f"only with the same overlay dirs and ids (use another data dir, or wait for it to end)"))
            if share.first is not None:
                raise SharePending(share.first)
            if len(share.kept or ()) != len(layers[0]):
                raise DataDirInUse(f"data dir {req.app_data_dir} is in use by rocker {share.holder_name()}, adopted "
                                   f"after a rockerd restart, whose overlays could not be taken over (see rockerd's "
                                   f"log): wait for it to end")
            share.members.add(name)
            self._by_name[name] = share
            return share, True, False
        share = Share(key, req.app_data_dir, layers, os.dup(data_fd), id=next(self._ids), first=cf.Future())
        share.members.add(name)
        self._by_key[key] = share
        self._by_name[name] = share
        return share, False, False

    def _revive(self, name: str, share: Share) -> bool:
        """The lingering share goes on if the data dir still holds its dirs; else it ends now and the claim
        waits for its end (SharePending), then builds afresh: nothing may be written to a removed dir."""
        held = share.marks is not None and still_there(share.data_fd, share.marks)
        with self.lock:
            first, share.first = share.first, None
            assert first is not None
            if not held:
                share.members.discard(name)
                self._by_name.pop(name, None)
                log.info("data dir %s: a dir its lingering overlays write to was removed or replaced: they end",
                         share.data_dir)
                ending = self._end(share)
            first.set_result(held)  # a claim that waited meanwhile tries again
        if not held:
            raise SharePending(ending.finished)
        return True

    @_locked
    def ending(self, key: DataKey) -> cf.Future[None] | None:
        """Done once the data dir's last share has cleared its work slot (None: nothing pending); a
        lingering share ends now (rm-data)."""
        share = self._by_key.get(key)
        if share is not None and self._lingering.pop(key, None) is not None:
            self._end(share)
        ending = self._ending.get(key)
        return ending.finished if ending is not None else None

    @_locked
    def begin_removal(self, key: DataKey, path: str) -> None:
        """rm-data: refuse while a rocker uses the dir; hold it so that none claims it meanwhile."""
        share = self._by_key.get(key)
        if share is not None:
            what = "being removed" if share.removing else f"in use by rocker {share.holder_name()}"
            raise DataDirInUse(f"data dir {path} is {what}: remove it once that ends (`rocker ps`)")
        if key in self._ending:
            raise DataDirInUse(f"data dir {path}: its last rocker's overlays and work dir are still being cleared: "
                               f"try again in a moment")
        self._by_key[key] = Share(key, path, ((), -1, -1), -1, removing=True)

    @_locked
    def end_removal(self, key: DataKey) -> None:
        share = self._by_key.get(key)
        if share is not None and share.removing:
            del self._by_key[key]

    @staticmethod
    def publish(share: Share, mounts: list[tuple[str, int]], dirs: Iterable[tuple[str, int]] = ()) -> \
            list[tuple[str, int]]:
        """The first rocker's overlay mounts are the share's to keep; clones of them for the rocker instead.
        `dirs`: what they write to (path relative to the data dir, an open fd of it), checked at a revival."""
        share.kept, clones = stage.keep(share.id, mounts)
        share.marks = [(rel, _identity(fd)) for rel, fd in dirs]
        return clones

    @staticmethod
    def clones(share: Share) -> list[tuple[str, int]]:
        return share.kept.clones() if share.kept is not None else []

    @_locked
    def built(self, name: str, pid: int) -> None:
        """The rocker's guard has its overlays attached: later rockers may join."""
        share = self._by_name.get(name)
        if share is None:
            return
        share.holders[name] = pid
        if share.first is not None:
            first, share.first = share.first, None
            first.set_result(True)

    @_locked
    def leave(self, name: str) -> None:
        """The rocker ended or its build failed; the last one out ends the share."""
        share = self._by_name.pop(name, None)
        if share is None:
            return
        share.members.discard(name)
        was_built = share.holders.pop(name, None) is not None
        if share.first is not None and not share.holders:  # the first build failed: a waiter starts over
            first, share.first = share.first, None
            first.set_result(False)
        if not share.members:
            if self.linger > 0 and was_built and share.marks is not None and not self._stopped:
                self._lingering[share.key] = time.monotonic() + self.linger
                share.ended.set_result(None)  # a build with other layers that waits for it goes ahead (_claim)
                self._start_expiry()
                self._due.notify()
            else:
                self._end(share)

    def _start_expiry(self) -> None:
        if self._expiry is None:
            self._expiry = threading.Thread(target=self._expire, name="rockerd-linger", daemon=True)
            self._expiry.start()

    def _expire(self) -> None:
        """On its own thread: each lingering share ends (drop and slot on the ends' pools) at its time."""
        with self.lock:
            while not self._stopped:
                now = time.monotonic()
                for key, at in list(self._lingering.items()):
                    if at <= now:
                        del self._lingering[key]
                        self._end(self._by_key[key])
                self._due.wait(min(self._lingering.values(), default=now + 3600) - now)

    def stop(self) -> list[cf.Future[None]]:
        """rockerd stops: every lingering share ends now; done once each has dropped its overlays and
        removed its work slot. No share lingers from now on."""
        with self.lock:
            self._stopped = True
            for key in list(self._lingering):
                del self._lingering[key]
                self._end(self._by_key[key])
            self._due.notify()
            return [e.finished for e in self._ending.values()]

    @_locked
    def adopt(self, name: str, pid: int, req: RockerRequestModel, slot: int) -> None:
        """A rocker a previous rockerd left running: its overlays, taken from its guard's mount
        namespace onto the stage, are what later rockers on its data dir join."""
        try:
            data_fd = fs.open_nofollow(req.app_data_dir, fs.O_PATH_DIR)
        except OSError as e:
            log.warning("adopted %s: its data dir %s cannot be opened (%s): it is not shared", name,
                        req.app_data_dir, e)
            return
        try:
            st = os.fstat(data_fd)
            key = (st.st_dev, st.st_ino)
            share = self._by_key.get(key)
            if share is None:
                share = self._by_key[key] = Share(key, req.app_data_dir, layers_of(req), os.dup(data_fd),
                                                  id=next(self._ids), slot=slot)
                self.slots.hold(req.app_data_dir, slot)
                self._take_over(share, name, pid)
            elif share.layers != layers_of(req):  # an older rockerd did not share: leave it alone
                log.warning("adopted %s: data dir %s is also used by %s with other overlays", name,
                            req.app_data_dir, share.holder_name())
                return
            share.members.add(name)
            share.holders[name] = pid
            self._by_name[name] = share
        finally:
            os.close(data_fd)

    def _take_over(self, share: Share, name: str, pid: int) -> None:
        targets = share.layers[0]
        if not targets:
            return
        path = f"/proc/{pid}/ns/mnt"
        try:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mounts = stage.take(nsfd, targets)
            finally:
                os.close(nsfd)
            share.kept = stage.Staged.put(share.id, mounts)  # clones made in another namespace: staged on any kernel
        except (OSError, BuildError, cf.TimeoutError) as e:
            log.warning("adopted %s: its overlays on data dir %s cannot be shared (%s): a new rocker there is "
                        "refused until it ends", name, share.data_dir, e)

    def _end(self, share: Share) -> Ending:
        del self._by_key[share.key]
        if not share.ended.done():  # a lingering share's last rocker has long left
            share.ended.set_result(None)
        ending = self._ending[share.key] = Ending()
        _off_loop("drop", self._clear, share, ending)
        return ending

    def _clear(self, share: Share, ending: Ending) -> None:
        """On a drop thread: the overlays (the next rocker on the dir waits only for them); the work slot
        then on a slot thread (a new share takes another slot meanwhile)."""
        try:
            if share.kept is not None:
                share.kept.drop()
        except (OSError, cf.TimeoutError) as e:
            log.warning("data dir %s: dropping its overlays: %s", share.data_dir, e)
        except Exception:
            log.exception("data dir %s: dropping its overlays", share.data_dir)
        finally:
            ending.dropped.set_result(True)
            _off_loop("slot", self._free_slot, share, ending)

    def _free_slot(self, share: Share, ending: Ending) -> None:
        """work/<slot>, then work/ itself only while none claims the dir (its build would make work/N in it)."""
        try:
            if share.slot is not None:
                fs.remove_tree(f"{layout.WORK}/{share.slot}", share.data_fd)
                with self.lock:
                    if share.key not in self._by_key:
                        _remove_if_empty(share.data_fd, layout.WORK)
                self.slots.give_back(share.data_dir, share.slot)
        except OSError as e:
            log.warning("data dir %s: removing its work slot: %s", share.data_dir, e)
        except Exception:
            log.exception("data dir %s: removing its work slot", share.data_dir)
        finally:
            os.close(share.data_fd)
            with self.lock:
                if self._ending.get(share.key) is ending:
                    del self._ending[share.key]
            ending.finished.set_result(None)


def written_dirs(groups: Iterable[OverlayGroup], dir_fds: dict[str, int], slot: int | None) -> list[tuple[str, int]]:
    """What a build's overlays write to: each one's upper and work dir (relative to the data dir, fd)."""
    out: list[tuple[str, int]] = []
    assert slot is not None
    for k, group in enumerate(groups):
        out += [(layout.upper_rel(group.lower), dir_fds[f"upper{k}"]),
                (layout.work_rel(slot, group.members[0]), dir_fds[f"work{k}"])]
    return out


def _identity(fd: int) -> tuple[int, ...]:
    """The dir itself and what the build checked of it (owner, mode: check_upper): a change ends the share."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_uid, st.st_gid, st.st_mode


def still_there(data_fd: int, marks: list[Mark]) -> bool:
    """Whether each marked dir is still the same inode, owner and mode at its path, reached beneath the data
    dir with no symlink and no mount on the way (as _own_dirs opens them: O_PATH, no credentials needed)."""
    for rel, was in marks:
        try:
            fd = fs.open_nofollow(rel, fs.O_PATH_DIR, data_fd, same_mount=True, beneath=True)
        except OSError:
            return False
        try:
            if _identity(fd) != was:
                return False
        finally:
            os.close(fd)
    return True


def _remove_if_empty(dir_fd: int, name: str) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        pass  # another slot is still in use, or it is gone
