"""Where mounts are cloned: from detached mounts (Linux 6.15), else in rockerd's staging namespace.

open_tree(OPEN_TREE_CLONE) clones a detached mount, or a dir inside one, from
Linux 6.15. Before it the mount must be attached in the caller's mount
namespace. Two kinds of clones are made:

- the dirs of a shared overlay (overlay_plan.py): each dir gets a clone of
  that subdir (mounting one overlay per dir instead cost ~0.3 ms each: work
  dir and upper fs probes);
- the overlays of a data dir in use (datashare.py), kept between its rockers
  (`Kept`): every rocker on it gets clones of the same mounts.

On 6.15 both are clones of detached mounts: the kept overlays are rockerd's
own fds of them (`Detached`), no thread and no namespace are involved. Before
it, one thread of rockerd (the stager) lives in a mount namespace of its own
that holds nothing but a tiny tmpfs (it pivots into it and detaches the copy
of the host's mounts, so no host file system is kept busy by it, and it is
private: nothing mounted there propagates anywhere). A shared overlay is
attached at /stage there for its clones and detached right after; the kept
overlays of a data dir stay attached under /shares (`Staged`) until its last
rocker ends. Dirs are reached as on the fast path: no symlink, no mount
crossed. Guards never see the namespace (they copy the daemon's own), and
it is the thread's: a crashed daemon leaves nothing staged.

The stager also serves a restarted rockerd on every kernel: it takes an
adopted guard's overlays out of that guard's mount namespace (`take`; setns
needs a thread with a root and cwd of its own, which the unshare gave it),
and keeps them `Staged`: a detached mount cloned in another namespace can be
cloned again only from that one (6.15's may_copy_tree), an attached one can.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

from rocker_sys import fs, ns
from rocker_sys import mount as m
from rocker_sys.libc import check, libc

from .. import kernel
from .steps import BuildError

log = logging.getLogger("rockerd.stage")

STAGE = "/stage"  # where a shared overlay is attached for its dirs' clones
SHARES = "/shares"  # where a data dir's kept overlays stay attached (before 6.15)
_HOST_ROOT_AT = "/proc"  # where the tmpfs is first attached (any dir would do; /proc is always there)
DEADLINE = 5.0  # seconds a stager job may take (mount work only, no caller's path)
OVERLAYFS_SUPER_MAGIC = 0x794C7630
T = TypeVar("T")
Mounts = list[tuple[str, int]]  # (target: the overlay dir, detached mount fd)

Job = tuple[Callable[[], object], "Future[object]", Callable[[], None] | None]


def sharing() -> bool:
    """Whether dirs on one mount may share an overlay: where the kernel clones out of detached
    mounts, or where the staging namespace could be made (else: one overlay per dir, as before)."""
    if kernel.current().tree_clone:
        return True
    return stager().up()


def clone_subdirs(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    """A detached clone of each dir `rels[i]` below the detached mount `mfd` (all or none)."""
    if kernel.current().tree_clone:
        return _subdir_clones(mfd, rels, whats)
    return staged_clones(mfd, rels, whats)


def staged_clones(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    """The clones made on the stager, `mfd` attached there meanwhile; it is detached once
    the caller has them (~55 us of umount the create does not wait for), before the next job."""
    return stager().call(_attach_and_clone, mfd, rels, whats, then=_detach_stage)


def _each(items: Sequence[tuple[str, T]], clone: Callable[[T, str], int]) -> Mounts:
    """(name, clone(item, name)) for each item; all or nothing."""
    out: Mounts = []
    try:
        for name, item in items:
            out.append((name, clone(item, name)))
    except BaseException:
        for _, fd in out:
            os.close(fd)
        raise
    return out


def _subdir_clones(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    pairs = list(zip(whats, rels, strict=True))
    return [fd for _, fd in _each(pairs, lambda rel, what: m.clone_subdir(mfd, rel, what))]


def _attach_and_clone(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    m.move_mount(mfd, STAGE)
    return _subdir_clones(mfd, rels, whats)


def _detach_stage() -> None:
    """Lazily (MNT_DETACH): the caller's fd of the overlay keeps it busy. EINVAL: nothing was
    attached (move_mount failed)."""
    try:
        m.umount(STAGE, m.MNT_DETACH)
    except OSError as e:
        if e.errno != errno.EINVAL:
            log.error("cannot detach the staged overlay: %s", e)


# -- a data dir's overlays, kept between its rockers (datashare.py) ----------------------------

class Kept:
    """A data dir's overlays (overlay dir, mount), of which each rocker on it gets clones."""

    def __len__(self) -> int:
        raise NotImplementedError

    def clones(self) -> Mounts:
        """A detached clone of each, for one rocker (all or none)."""
        raise NotImplementedError

    def drop(self) -> None:
        """The kept mounts go (the last rocker on the data dir ended)."""
        raise NotImplementedError


class Detached(Kept):
    """6.15: rockerd's fds of the detached mounts, cloned on the calling thread."""

    def __init__(self, mounts: Mounts) -> None:
        self.mounts = mounts

    def __len__(self) -> int:
        return len(self.mounts)

    def clones(self) -> Mounts:
        return _each(self.mounts, m.clone_tree)

    def drop(self) -> None:
        mounts, self.mounts = self.mounts, []
        for _, fd in mounts:
            os.close(fd)  # the last reference of a detached mount: the kernel unmounts it


class Staged(Kept):
    """Before 6.15: attached under /shares in the stager's namespace, cloned there."""

    def __init__(self, staged: list[tuple[str, str]]) -> None:
        self.staged = staged

    @classmethod
    def put(cls, share_id: int, mounts: Mounts) -> Staged:
        return cls(stager().call(_put, share_id, mounts))

    def __len__(self) -> int:
        return len(self.staged)

    def clones(self) -> Mounts:
        return stager().call(_each, self.staged, _clone_at)

    def drop(self) -> None:
        staged, self.staged = self.staged, []
        stager().call(_unstage, staged)


def keep(share_id: int, mounts: Mounts) -> tuple[Kept, Mounts]:
    """Keep a data dir's overlay mounts, made in rockerd's own namespace (their fds are the Kept's
    now, or closed), and clones of them for the first rocker: staged, in one trip to the stager."""
    if kernel.current().tree_clone:
        kept = Detached(mounts)
        try:
            return kept, kept.clones()
        except BaseException:
            kept.drop()
            raise
    staged, clones = stager().call(_put_and_clone, share_id, mounts)
    return Staged(staged), clones


def take(nsfd: int, targets: Sequence[str]) -> Mounts:
    """Detached clones of the overlays at `targets` in an adopted guard's mount namespace `nsfd`."""
    return stager().call(_take, nsfd, targets)


def _put(share_id: int, mounts: Mounts) -> list[tuple[str, str]]:
    """Attach each detached mount (its fd is closed) at a stage dir of its own."""
    staged: list[tuple[str, str]] = []
    try:
        for k, (target, mfd) in enumerate(mounts):
            where = f"{SHARES}/{share_id}-{k}"
            os.mkdir(where, 0o700)
            try:
                m.move_mount(mfd, where)
            except BaseException:
                os.rmdir(where)
                raise
            staged.append((target, where))
    except BaseException:
        _unstage(staged)
        raise
    finally:
        for _, mfd in mounts:
            os.close(mfd)
    return staged


def _put_and_clone(share_id: int, mounts: Mounts) -> tuple[list[tuple[str, str]], Mounts]:
    staged = _put(share_id, mounts)
    try:
        return staged, _each(staged, _clone_at)
    except BaseException:
        _unstage(staged)
        raise


def _clone_at(where: str, what: str) -> int:
    """A detached clone of the mount attached at `where`, reached with no symlink."""
    ref = fs.open_nofollow(where, fs.O_PATH_DIR)
    try:
        return m.clone_tree(ref, what)
    finally:
        os.close(ref)


def _unstage(staged: list[tuple[str, str]]) -> None:
    for _, where in staged:
        libc.umount2(os.fsencode(where), m.MNT_DETACH)
        try:
            os.rmdir(where)
        except OSError as e:
            log.warning("stage dir %s: %s", where, e)


def _take(nsfd: int, targets: Sequence[str]) -> Mounts:
    ns.setns(nsfd, ns.CLONE_NEWNS, "an adopted rocker's mount namespace")
    try:
        out = _each([(t, t) for t in targets], _clone_at)
    finally:
        ns.setns(stager().home, ns.CLONE_NEWNS, "the stage's mount namespace")
    for t, fd in out:
        if _fs_magic(fd) != OVERLAYFS_SUPER_MAGIC:
            for _, f in out:
                os.close(f)
            raise BuildError("adopt", errno.EXDEV, f"{t} is not an overlay in that rocker")
    return out


def _fs_magic(fd: int) -> int:
    """f_type of fstatfs(2) (os.fstatvfs does not give it): the first word of struct statfs."""
    buf = ctypes.create_string_buffer(256)
    check(libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs", f"fd {fd}")
    return ctypes.c_long.from_buffer(buf).value


# -- the stager: one thread in the staging namespace -------------------------------------------

class Stager:
    """One thread in a private mount namespace, running jobs one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._ready: Future[None] = Future()
        self.home = -1  # the namespace's fd, to come back to after a setns (take)
        self.thread = threading.Thread(target=self._serve, name="rockerd-stage", daemon=True)
        self.thread.start()

    def up(self) -> bool:
        """Whether the namespace was made (waits for the thread's set-up the first time)."""
        return self._ready.exception() is None

    def call(self, fn: Callable[..., T], *args: object, then: Callable[[], None] | None = None) -> T:
        """fn(*args), run on the thread within DEADLINE; `then` runs there after the caller has it."""
        self._ready.result()  # raises what set-up raised, for every job
        done: Future[T] = Future()
        self._jobs.put((lambda: fn(*args), done, then))  # type: ignore[arg-type]
        return done.result(DEADLINE)

    def _serve(self) -> None:
        try:
            me = os.open("/proc/thread-self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # no /proc once in there
            try:
                enter_stage_namespace()
                self.home = os.open("ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=me)
            finally:
                os.close(me)
        except BaseException as e:
            log.error("cannot make the staging mount namespace: %s", e)
            self._ready.set_exception(e)
            return
        self._ready.set_result(None)
        while True:
            job, done, then = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as e:
                done.set_exception(e)
            finally:
                if then is not None:
                    then()


def enter_stage_namespace() -> None:
    """This thread into a new mount namespace whose only mount is a small tmpfs with /stage and
    /shares in it.

    unshare(CLONE_NEWNS) also unshares the thread's root and cwd (CLONE_FS), so the other
    threads keep theirs; pivot_root changes only the roots that are this namespace's root."""
    ns.unshare(ns.CLONE_NEWNS)
    m.make_rprivate("/")  # before anything is mounted here: nothing may propagate to the host
    fsfd = m.fsopen("tmpfs")
    try:
        m.fsconfig_string(fsfd, "size", "64k", "stage tmpfs")
        m.fsconfig_string(fsfd, "mode", "0700", "stage tmpfs")
        m.fsconfig_create(fsfd, "stage tmpfs")
        root = m.fsmount(fsfd, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOEXEC, "stage tmpfs")
    finally:
        os.close(fsfd)
    try:
        for d in (STAGE, SHARES):
            os.mkdir(d.lstrip("/"), 0o700, dir_fd=root)
        m.move_mount(root, _HOST_ROOT_AT)
        os.fchdir(root)
    finally:
        os.close(root)
    m.pivot_root(".", ".")  # the tmpfs is the root now, the old root stacked under it...
    m.umount(".", m.MNT_DETACH)  # ...and detached with every host mount below it
    os.chdir("/")


_the_stager: Stager | None = None
_lock = threading.Lock()


def stager() -> Stager:
    """The one stager, started on first use (datashare.py starts it with the daemon where it is needed)."""
    global _the_stager
    with _lock:
        if _the_stager is None:
            _the_stager = Stager()
        return _the_stager
