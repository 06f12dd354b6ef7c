"""Rockers on one data dir share its overlays: one overlayfs per overlay group, cloned into each.

Two overlayfs mounts over one upper dir are undefined behaviour (the kernel
says "upperdir is in-use": writes of one are lost to the other, sqlite sees
I/O errors). So the data dir, known by its inode, has at most one set of
overlays at a time: the first rocker on it builds them (host.py's steps) and
every later one with the same overlay dirs and uid:gid gets clones of the
same mounts, so its writes and the others' land on one filesystem. A request
for a data dir in use with other overlay dirs or ids is refused, naming a
rocker that holds it. The last rocker's end takes the overlays and the work
slot with it.

The share keeps each overlay attached in a mount namespace of its own (the
"stage": one thread of rockerd unshares it and keeps nothing in it but a
tmpfs), and clones it from there for each rocker: open_tree(OPEN_TREE_CLONE)
of an attached mount works on every kernel rockerd supports (a detached one
can only be cloned from 6.15), so both kernel paths share the same way, and
the overlay lives exactly as long as the share, whichever rocker ends first.
Guards never see the stage (they copy the daemon's own namespace). A rockerd
restarted with rockers live takes each adopted rocker's overlays from its
guard's mount namespace (setns on the stage thread) onto the stage, after
checking they are overlays, so later rockers on that data dir join them.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import errno
import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rocker_sys import fs, ns
from rocker_sys import mount as m
from rocker_sys.libc import check, libc

from .. import policy
from ..request import RockerRequestModel
from . import layout
from .stage import enter_stage_namespace
from .steps import BuildError
from .workslots import WorkSlots

log = logging.getLogger("rockerd.datashare")

OVERLAYFS_SUPER_MAGIC = 0x794C7630
STAGE_DEADLINE = 5.0  # seconds a stage operation may take (mount work only, no caller's path)
T = TypeVar("T")
DataKey = tuple[int, int]  # (st_dev, st_ino) of the data dir
Layers = tuple[tuple[str, ...], int, int]  # overlay dirs, uid, gid: what must match to share


def layers_of(req: RockerRequestModel) -> Layers:
    return tuple(req.app_overlay_dirs), req.uid, req.gid


@dataclass
class Share:
    key: DataKey
    data_dir: str
    layers: Layers
    data_fd: int  # O_PATH, for removing the work slot at the end
    id: int = 0  # names its stage dirs
    members: set[str] = field(default_factory=set)  # rockers on it, builds in progress included
    holders: dict[str, int] = field(default_factory=dict)  # built rockers: name -> guard pid
    staged: list[tuple[str, str]] = field(default_factory=list)  # (overlay dir, its stage dir)
    slot: int | None = None
    first: cf.Future[bool] | None = None  # while the first rocker builds the overlays
    removing: bool = False  # rm-data is removing the dir

    def holder_name(self) -> str:
        return next(iter(self.holders), None) or next(iter(self.members), "?")


class DataDirInUse(policy.Denied):
    """The data dir is in use with other overlays or ids, or is being removed."""


class SharePending(Exception):
    """Another build is making the overlays this one would share: wait for it, then try again."""

    passthrough = True

    def __init__(self, first: cf.Future[bool]) -> None:
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


class DataShares:
    """Every data dir in use: who uses it, with which overlays, and where they are staged."""

    def __init__(self, slots: WorkSlots) -> None:
        self.slots = slots
        self._by_key: dict[DataKey, Share] = {}
        self._by_name: dict[str, Share] = {}
        self._ids = itertools.count()
        self.stage = Stage()
        self.stage.call(int)  # its thread and namespace now, not on a create's path (and its fd with the daemon's)
        self.lock = threading.RLock()  # builds run their dir steps on threads (dirsteps.py)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: DataKey) -> Share | None:
        return self._by_key.get(key)

    @_locked
    def claim(self, name: str, req: RockerRequestModel, data_fd: int) -> tuple[Share, bool]:
        """Join the data dir's share (True) or start it (False); refuse a different one."""
        st = os.fstat(data_fd)
        key = (st.st_dev, st.st_ino)
        share = self._by_key.get(key)
        layers = layers_of(req)
        if share is not None:
            if share.removing:
                raise DataDirInUse(f"data dir {req.app_data_dir} is being removed (rocker rm-data)")
            if share.layers != layers:
                raise DataDirInUse(
                    f"data dir {req.app_data_dir} is in use by rocker {share.holder_name()} with "
                    f"{_describe(share.layers)}; this request has {_describe(layers)}: rockers share a data dir "
                    f"only with the same overlay dirs and ids (use another data dir, or wait for it to end)")
            if share.first is not None:
                raise SharePending(share.first)
            if len(share.staged) != len(layers[0]):
                raise DataDirInUse(f"data dir {req.app_data_dir} is in use by rocker {share.holder_name()}, adopted "
                                   f"after a rockerd restart, whose overlays could not be taken over (see rockerd's "
                                   f"log): wait for it to end")
            share.members.add(name)
            self._by_name[name] = share
            return share, True
        share = Share(key, req.app_data_dir, layers, os.dup(data_fd), id=next(self._ids), first=cf.Future())
        share.members.add(name)
        self._by_key[key] = share
        self._by_name[name] = share
        return share, False

    @_locked
    def begin_removal(self, key: DataKey, path: str) -> None:
        """rm-data: refuse while a rocker uses the dir; hold it so that none claims it meanwhile."""
        share = self._by_key.get(key)
        if share is not None:
            what = "being removed" if share.removing else f"in use by rocker {share.holder_name()}"
            raise DataDirInUse(f"data dir {path} is {what}: remove it once that ends (`rocker ps`)")
        self._by_key[key] = Share(key, path, ((), -1, -1), -1, removing=True)

    @_locked
    def end_removal(self, key: DataKey) -> None:
        share = self._by_key.get(key)
        if share is not None and share.removing:
            del self._by_key[key]

    def publish(self, share: Share, mounts: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The first rocker's overlay mounts onto the stage; clones of them for the rocker instead."""
        share.staged = self.stage.call(self.stage.put, share.id, mounts)
        return self.stage.call(self.stage.clone, share.staged)

    def clones(self, share: Share) -> list[tuple[str, int]]:
        return self.stage.call(self.stage.clone, share.staged)

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
        share.holders.pop(name, None)
        if share.first is not None and not share.holders:  # the first build failed: a waiter starts over
            first, share.first = share.first, None
            first.set_result(False)
        if not share.members:
            self._end(share)

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
                mounts = self.stage.call(self.stage.take, nsfd, targets)
            finally:
                os.close(nsfd)
            share.staged = self.stage.call(self.stage.put, share.id, mounts)
        except (OSError, BuildError, cf.TimeoutError) as e:
            log.warning("adopted %s: its overlays on data dir %s cannot be shared (%s): a new rocker there is "
                        "refused until it ends", name, share.data_dir, e)

    def _end(self, share: Share) -> None:
        del self._by_key[share.key]
        try:
            if share.staged:
                self.stage.call(self.stage.drop, share.staged)
            if share.slot is not None:
                remove_work_slot(share.data_fd, share.slot)
                self.slots.give_back(share.data_dir, share.slot)
        except (OSError, cf.TimeoutError) as e:
            log.warning("data dir %s: ending its share: %s", share.data_dir, e)
        finally:
            os.close(share.data_fd)


class Stage:
    """A thread in a mount namespace of its own, where shared overlays stay attached (see stage.py).

    Attached, a mount can be cloned on any kernel; in this namespace, no guard
    copies it. The namespace keeps nothing of the host's mounts (each is
    detached right after the unshare), so it pins no filesystem but its own.
    """

    ROOT = "/shares"  # in the stage's own tmpfs root

    def __init__(self) -> None:
        self._pool: cf.ThreadPoolExecutor | None = None
        self._home = -1

    def call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="rockerd-stage", initializer=self._enter)
        return self._pool.submit(fn, *args).result(STAGE_DEADLINE)

    def _enter(self) -> None:
        """The same kind of namespace stage.py's thread has: its only mount a small tmpfs (the host's
        mounts detached), so it pins no host filesystem; the shares' overlays are attached in it."""
        me = os.open("/proc/thread-self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # no /proc once in there
        try:
            enter_stage_namespace()
            self._home = os.open("ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=me)
        finally:
            os.close(me)
        os.mkdir(self.ROOT, 0o700)

    def put(self, share_id: int, mounts: list[tuple[str, int]]) -> list[tuple[str, str]]:
        """Attach each detached mount (its fd is closed) at a stage dir of its own."""
        staged: list[tuple[str, str]] = []
        try:
            for k, (target, mfd) in enumerate(mounts):
                where = f"{self.ROOT}/{share_id}-{k}"
                os.mkdir(where, 0o700)
                try:
                    m.move_mount(mfd, where)
                except BaseException:
                    os.rmdir(where)
                    raise
                staged.append((target, where))
        except BaseException:
            self.drop(staged)
            raise
        finally:
            for _, mfd in mounts:
                os.close(mfd)
        return staged

    @staticmethod
    def clone(staged: list[tuple[str, str]]) -> list[tuple[str, int]]:
        return _clone_trees(staged)

    @staticmethod
    def drop(staged: list[tuple[str, str]]) -> None:
        for _, where in staged:
            libc.umount2(os.fsencode(where), m.MNT_DETACH)
            try:
                os.rmdir(where)
            except OSError as e:
                log.warning("stage dir %s: %s", where, e)

    def take(self, nsfd: int, targets: Sequence[str]) -> list[tuple[str, int]]:
        """Clones of the overlays at `targets` in another mount namespace (an adopted guard's)."""
        ns.setns(nsfd, ns.CLONE_NEWNS, "an adopted rocker's mount namespace")
        try:
            out = _clone_trees([(t, t) for t in targets])
        finally:
            ns.setns(self._home, ns.CLONE_NEWNS, "the stage's mount namespace")
        for t, fd in out:
            if _fs_magic(fd) != OVERLAYFS_SUPER_MAGIC:
                for _, f in out:
                    os.close(f)
                raise BuildError("adopt", errno.EXDEV, f"{t} is not an overlay in that rocker")
        return out


def _clone_trees(pairs: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """(target, a detached clone of the mount at `where`) for each (target, where), no symlink followed;
    all or nothing."""
    out: list[tuple[str, int]] = []
    try:
        for target, where in pairs:
            ref = fs.open_nofollow(where, fs.O_PATH_DIR)
            try:
                out.append((target, m.clone_tree(ref, f"overlay {target}")))
            finally:
                os.close(ref)
    except BaseException:
        for _, fd in out:
            os.close(fd)
        raise
    return out


def _fs_magic(fd: int) -> int:
    """f_type of fstatfs(2) (os.fstatvfs does not give it): the first word of struct statfs."""
    buf = ctypes.create_string_buffer(256)
    check(libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs", f"fd {fd}")
    return ctypes.c_long.from_buffer(buf).value


def remove_work_slot(data_fd: int, slot: int) -> None:
    """work/<slot> and, once empty, work/: overlayfs's scratch, of no use once its mounts are gone."""
    fs.remove_tree(f"{layout.WORK}/{slot}", data_fd)
    try:
        os.rmdir(layout.WORK, dir_fd=data_fd)
    except OSError:
        pass  # another slot is still in use, or it is gone
